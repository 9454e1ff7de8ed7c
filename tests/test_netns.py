"""Three hosts in network namespaces this test creates: a main rig, an auxiliary rig, a stranger.

The stranger sends a forged answer and junk to the main rig's socket while the main rig waits
for the real answer: they must be ignored. Skipped where namespaces cannot be made (not root,
no iproute2, a sandbox that forbids it).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAG = f'ibl{os.getpid() % 100000}'
HOSTS = {'main': f'{TAG}m', 'rig': f'{TAG}r', 'stranger': f'{TAG}s'}
MAIN_TO_RIG, RIG_IP = '10.77.1.1', '10.77.1.2'
MAIN_TO_STRANGER, STRANGER_IP = '10.77.2.1', '10.77.2.2'

RIG = f'''
import sys
from iblnet_sync import RigServer
rig = RigServer('udp://{RIG_IP}:0', name='rig')
def on_status(data):
    print('asked', flush=True)
    sys.stdin.readline()  # answer when the test says so
rig.assign_handler('EXPSTATUS', on_status)
print(rig.uri, flush=True)
rig.wait_closed()
'''

MAIN = '''
import json, sys
from iblnet_sync import Services
with Services({'rig': sys.argv[1]}, timeout=20) as services:
    print(services['rig'].local_address[1], flush=True)
    print(json.dumps(services.status('CONNECTED')), flush=True)
'''

STRANGER = '''
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for datagram in (b'[32, 20]', b'[0, "RuntimeError: forged", 32]', b'junk', b'[32, 30]'):
        sock.sendto(datagram, (sys.argv[1], int(sys.argv[2])))
'''


def ip(*args):
    subprocess.run(['ip', *args], check=True, capture_output=True, timeout=10)


def in_host(host, code, *args, **kwargs):
    """Run Python `code` in `host`'s namespace, from the repository root (as the other tests' child processes:
    ``-c`` code imports this checkout's iblnet_sync, as the test does)."""
    return subprocess.Popen(['ip', 'netns', 'exec', HOSTS[host], sys.executable, '-c', code, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)


@pytest.fixture
def hosts():
    if shutil.which('ip') is None or os.geteuid() != 0:
        pytest.skip('network namespaces need root and iproute2')
    try:
        ip('netns', 'add', HOSTS['main'])
    except subprocess.CalledProcessError as ex:
        pytest.skip(f'network namespaces not permitted here: {ex.stderr.strip()}')
    try:
        for other, (near, far) in (('rig', (MAIN_TO_RIG, RIG_IP)), ('stranger', (MAIN_TO_STRANGER, STRANGER_IP))):
            ip('netns', 'add', HOSTS[other])
            a, b = f'{TAG}{other[0]}a', f'{TAG}{other[0]}b'
            ip('link', 'add', a, 'netns', HOSTS['main'], 'type', 'veth', 'peer', 'name', b, 'netns', HOSTS[other])
            ip('-n', HOSTS['main'], 'addr', 'add', f'{near}/24', 'dev', a)
            ip('-n', HOSTS[other], 'addr', 'add', f'{far}/24', 'dev', b)
            for host, link in ((HOSTS['main'], a), (HOSTS[other], b)):
                ip('-n', host, 'link', 'set', link, 'up')
                ip('-n', host, 'link', 'set', 'lo', 'up')
        ip('-n', HOSTS['stranger'], 'route', 'add', '10.77.1.0/24', 'via', MAIN_TO_STRANGER)
        yield
    finally:
        for name in HOSTS.values():
            subprocess.run(['ip', 'netns', 'del', name], capture_output=True, timeout=10)


def test_datagrams_from_a_host_that_is_not_the_rig_are_ignored(hosts):
    rig = in_host('rig', RIG)
    main = None
    try:
        rig_uri = rig.stdout.readline().strip()
        assert rig_uri.startswith(f'udp://{RIG_IP}:'), rig_uri
        main = in_host('main', MAIN, rig_uri)
        main_port = main.stdout.readline().strip()
        assert rig.stdout.readline().strip() == 'asked'  # the main rig now waits for the answer
        with in_host('stranger', STRANGER, MAIN_TO_RIG, main_port) as stranger:
            assert stranger.wait(10) == 0
        rig.stdin.write('go\n')
        rig.stdin.flush()
        assert json.loads(main.stdout.readline()) == {'rig': [0]}  # the rig's answer, not the forgery
        assert main.wait(10) == 0
    finally:
        for process in (rig, main):
            if process is not None:
                process.kill()
                process.wait(10)
                for stream in (process.stdin, process.stdout):
                    stream.close()
