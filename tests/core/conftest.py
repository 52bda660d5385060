from tests.support.hub_fixtures import cache, hub  # noqa: F401  (fixtures)
