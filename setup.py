"""Packaging shim: the configuration lives in setup.cfg."""
from setuptools import setup

setup()
