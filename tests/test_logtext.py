"""Log lines a peer cannot abuse: peer_text escapes and cuts, PeerLogLimiter counts what it holds back."""
import logging
import threading

import pytest

from iblnet_sync.logtext import PEER_TEXT_LIMIT, PeerLogLimiter, peer_text


@pytest.mark.parametrize('text, shown', [
    ('mouse', 'mouse'),
    ('C:\\rigs\\record.bonsai', 'C:\\rigs\\record.bonsai'),  # backslashes stay readable
    ('a\rb\nc\td', 'a\\rb\\nc\\td'),
    ('\x1b[2K', '\\x1b[2K'),
    ('a\u2028b\u2029c\x85d', 'a\\u2028b\\u2029c\\x85d'),
    ('zero\u200bwidth', 'zero\\u200bwidth'),
    ('\ud800', '\\ud800'),  # a lone surrogate, which a UTF-8 log file could not write
    ('\U000e0001tag', '\\U000e0001tag'),
    ('caf\u00e9 \u00b5s', 'caf\u00e9 \u00b5s'),  # printable text is kept as it is
])
def test_peer_text_escapes_what_is_not_printable(text, shown):
    assert peer_text(text) == shown


def test_peer_text_cuts_with_a_marker_counting_what_was_left_out():
    assert peer_text('m' * 65_000) == 'm' * PEER_TEXT_LIMIT + '...[64700 more characters]'
    assert peer_text('abc', limit=3) == 'abc'
    assert peer_text('\r' * 10, limit=5) == '\\r\\r...[8 more characters]', 'the limit counts escaped characters'


def test_peer_text_shows_other_values_as_their_repr():
    assert peer_text(b'\x00junk') == "b'\\x00junk'"
    assert peer_text(['x' * 1000], limit=10) == "['xxxxxxxx...[994 more characters]"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_holds_back_lines_over_the_burst_and_counts_them():
    clock = Clock()
    limiter = PeerLogLimiter(burst=3, period=10.0, clock=clock)
    assert [limiter.admit('10.0.0.7') for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.admit('10.0.0.8') == 0, 'each key has its own burst'
    clock.now = 9.9
    assert limiter.admit('10.0.0.7') is None
    clock.now = 10.0
    assert limiter.admit('10.0.0.7') == 3, 'the first line of the next period says how many were held back'
    assert limiter.admit('10.0.0.7') == 0


def test_limiter_remembers_a_bounded_number_of_keys():
    limiter = PeerLogLimiter(burst=1, max_keys=100, clock=Clock())
    for port in range(20_000):
        limiter.admit(('10.0.0.7', port))
    assert len(limiter._keys) == 100
    assert limiter.admit(('10.0.0.7', 0)) == 0, 'a forgotten key starts again'
    assert limiter.admit(('10.0.0.7', 19_999)) is None


def test_limiter_logs_with_the_count_and_escapes_the_key(caplog):
    clock = Clock()
    limiter = PeerLogLimiter(burst=1, period=5.0, clock=clock)
    logger = logging.getLogger('iblnet_sync.test_logtext')
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert limiter.warning(logger, 'peer\r1', 'junk from %s', 'peer')
        assert not limiter.warning(logger, 'peer\r1', 'junk from %s', 'peer')
        assert not limiter.log(logger, logging.DEBUG, 'other', 'below the level: not counted')
        clock.now = 5.0
        assert limiter.warning(logger, 'peer\r1', 'junk from %s', 'peer')
    assert [record.getMessage() for record in caplog.records] == [
        'junk from peer', 'junk from peer (1 more for peer\\r1 were not logged before this one)']
    assert caplog.records[0].filename == 'test_logtext.py', 'the location is the caller\'s'
    assert 'other' not in limiter._keys


def test_limiter_counts_exactly_from_many_threads():
    limiter = PeerLogLimiter(burst=50, clock=Clock())
    admitted = []

    def flood() -> None:
        admitted.extend(limiter.admit('peer') is not None for _ in range(1000))

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 50 and len(admitted) == 4000


def test_limiter_refuses_settings_that_would_log_nothing():
    with pytest.raises(ValueError, match='burst'):
        PeerLogLimiter(burst=0)
    with pytest.raises(ValueError, match='period'):
        PeerLogLimiter(period=0)
