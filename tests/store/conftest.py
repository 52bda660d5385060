from tests.support.hub_fixtures import hub  # noqa: F401  (fixtures)
