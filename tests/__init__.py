"""The test suite: real PostgreSQL and real HTTP servers on loopback."""
