# The CFFI extension is declared here because setuptools' pyproject table has no
# key for cffi_modules; everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["harness/_ffi_build.py:ffibuilder"])
