"""A test-only czo-kit plugin: a cache driver registered under the ``dictcache`` scheme."""
