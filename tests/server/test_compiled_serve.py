"""The key end-to-end server tests again, on torch-cpu under ``--engine compiled``.

The tests are imported from their modules and collected here, where ``server`` is a real server whose backend
runs the compiled decode step: chat (stream and not, seeded), the feature stream (one event per token,
concurrent chats joined by request id), steering (flags, isolation between queued requests) and logprobs /
logit_bias against transformers' reference. The graphs are those the tiny checkpoint's compiled tests build
(dynamo reuses them across backend instances of the same shapes), so this module adds seconds, not a compile.
"""

from __future__ import annotations

import pytest

from neuroscope.core import registry
from tests.server.test_chat_api import (  # noqa: F401  (collected here, with this module's server)
    test_non_stream_completion_with_usage,
    test_seed_reproduces_sampled_output,
    test_stream_matches_non_stream_and_reports_usage,
)
from tests.server.test_feature_stream import (  # noqa: F401
    test_one_event_per_token_in_order_concatenating_to_the_text,
    test_two_concurrent_chats_are_joined_by_request_id,
)
from tests.server.test_sampling_controls import (  # noqa: F401
    test_chat_logprobs_match_the_reference,
    test_logit_bias_forces_and_bans_through_the_api,
)
from tests.server.test_steering import (  # noqa: F401
    test_a_steered_request_then_a_plain_one_is_exactly_plain,
    test_queued_concurrent_requests_each_get_their_own_steering,
    test_steered_events_are_flagged_and_completion_echoes_the_spec,
)
from tests.support.server import RunningServer


@pytest.fixture(scope="module")
def server(tiny_fixture):
    if "torch-cpu" not in registry.available():
        pytest.skip("torch-cpu is not available here")
    srv = RunningServer("torch-cpu:compiled", tiny_fixture)
    assert srv.backend.compiled is not None
    yield srv
    srv.stop()
