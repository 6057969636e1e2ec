"""A PostgreSQL server for the tests: the one at SYNCD_TEST_DSN if it answers, else a
throwaway cluster started here. The cluster code is syncd's own (`syncd demo` starts
its private server the same way); this module names what the tests use."""

from syncd.demo.server import DEFAULT_DSN, Cluster, answers, find_bin, wait_until_answers, with_database
from tests.support.ports import free_port

__all__ = ["DEFAULT_DSN", "Cluster", "answers", "find_bin", "free_port", "wait_until_answers", "with_database"]
