"""Packaging for the billing service: `pip install -e .[test]`."""
from setuptools import find_packages, setup

setup(
    name="billing",
    version="0.1.0",
    description="Billing microservice: atomic, idempotent money operations over HTTP",
    python_requires=">=3.11",
    # lua/ (what Redis runs) and reports/ (what MongoDB runs) sit at the top level and install as the data
    # packages billing.lua and billing.reports
    packages=find_packages(include=["billing", "billing.*"]) + ["billing.lua", "billing.reports"],
    package_dir={"billing.lua": "lua", "billing.reports": "reports"},
    package_data={"billing": ["templates/*", "static/*"], "billing.lua": ["*.lua"], "billing.reports": ["*.jsonc"]},
    include_package_data=True,
    install_requires=[
        "tornado>=6.4,<7",
        "redis[hiredis]>=5.0,<8",
        "motor>=3.5,<4",
        "pymongo>=4.8,<5",
        "pydantic>=2.7,<3",
        "pydantic-settings>=2.3,<3",
        "orjson>=3.9,<4",
        "prometheus-client>=0.20,<1",
        "fakeredis[lua]>=2.41,<3",  # Redis Functions (FUNCTION LOAD, FCALL) as Redis 7.0 has them
        "lupa>=2.0,<3",
        "mongomock>=4.1,<5",
        "mongomock-motor>=0.0.34,<0.1",
        "typing_extensions>=4.8",
        "swagger-ui-py>=23,<27",
        "tzdata>=2024.1",
        "rich>=13.7,<16",  # progress of the long commands on a terminal
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-asyncio>=0.23,<2",
            "pytest-xdist>=3.5,<4",  # make test runs the suite in 2 processes (it mostly waits on servers)
            "hypothesis>=6.100,<7",
            "schemathesis>=4,<5",
            "SecantusDB>=0.7.0b3,<0.8",
            "playwright>=1.45,<2",
            "ruff>=0.5,<1",  # ruff check (make lint) and ruff format (make fmt)
            "mypy>=1.10,<2",  # make typecheck
            "pip-tools>=7.4,<8",  # make lock: pip-compile writes constraints.txt from this file
            "py-spy>=0.3.14,<1",
            "PyYAML>=6,<7",
            "openapi-spec-validator>=0.7,<0.10",
        ],
    },
    entry_points={"console_scripts": ["billing=billing.cli:main"]},
)
