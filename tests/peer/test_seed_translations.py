"""The Rust, Go and Kotlin guides' examples, translated name by name through docs/blazen.md.

Each test keeps the guide's order and names; comments quote the guide's line where the
Python differs.
"""

from __future__ import annotations

import json

import pytest

from peerflow import (
    Context,
    Event,
    PeerError,
    PeerErrorKind,
    RefLifetime,
    RegistryKey,
    StartEvent,
    StopEvent,
    ValidationError,
    Workflow,
    WorkflowError,
    step,
)
from peerflow.peer import (
    ENVELOPE_VERSION,
    TOKEN_ENV_VAR,
    PeerClient,
    PeerServer,
    SubWorkflowRequest,
    resolve_token,
)
from peerflow.registry import Registry


@step(name="my_app::analyze")
async def my_analyze_step(ctx: Context, ev: StartEvent) -> Event:
    return Event("Analyzed", words=len(ev.document.split()))


@step(name="my_app::summarize", accepts=["Analyzed"])
async def my_summarize_step(ctx: Context, ev: Event) -> StopEvent:
    # ctx.session_refs().insert_with_lifetime(my_value, RefLifetime::UntilParentFinish)
    ctx.refs.insert(b"weights" * 4, RefLifetime.UNTIL_PARENT_FINISH)
    return StopEvent(result={"words": ev.words})


def _peer_b_registry() -> Registry:
    # register_step_builder("my_app::analyze", my_analyze_step_builder);
    # register_step_builder("my_app::summarize", my_summarize_step_builder);
    registry = Registry()
    registry.register_step("my_app::analyze", my_analyze_step)
    registry.register_step("my_app::summarize", my_summarize_step)
    registry.register_workflow(Workflow("analyze-pipeline", [my_analyze_step, my_summarize_step]))
    return registry


async def test_rust_guide_setup_invoke_deref_release() -> None:
    # let server = BlazenPeerServer::new("node-b");
    server = PeerServer("node-b", registry=_peer_b_registry())
    # server.serve("0.0.0.0:50051".parse()?).await?;  (start: the test needs the port)
    await server.start("127.0.0.1:0")
    try:
        # let mut client = BlazenPeerClient::connect("http://peer-b:50051", "node-a").await?;
        client = await PeerClient.connect(f"http://{server.address}", "node-a")
        # let input = serde_json::json!({ "document": "..." });
        input = {"document": "four words of text"}
        # let request = SubWorkflowRequest::new("analyze-pipeline", vec![...], &input, Some(60))?;
        request = SubWorkflowRequest.new(
            "analyze-pipeline",
            ["my_app::analyze", "my_app::summarize"],
            input,
            60,
        )
        assert request.envelope_version == ENVELOPE_VERSION == 1
        # let response = client.invoke_sub_workflow(request).await?;
        response = await client.invoke_sub_workflow(request)
        # if let Some(err) = &response.error { ... } else { let result = response.result_value()?; }
        assert response.error is None
        result = response.result_value()
        assert result == {"words": 4}

        # for (uuid, descriptor) in &response.remote_refs {
        assert len(response.remote_refs) == 1
        for uuid, descriptor in response.remote_refs.items():
            # let key = RegistryKey(*uuid);
            key = RegistryKey(uuid)
            # let bytes = client.deref_session_ref(key).await?;
            data = await client.deref_session_ref(key)
            assert bytes(data) == b"weights" * 4
            assert (descriptor.origin_node_id, descriptor.type_tag) == ("node-b", "bytes")
            # let was_released = client.release_session_ref(key).await?;
            was_released = await client.release_session_ref(key)
            assert was_released is True
            assert await client.release_session_ref(key) is False  # already gone
        await client.close()
    finally:
        await server.close()


async def test_rust_guide_error_field_and_peer_error_workflow_variant() -> None:
    async with PeerServer("node-b", registry=_peer_b_registry()) as server:
        client = await PeerClient.connect(f"http://{server.address}", "node-a")
        bad = SubWorkflowRequest.new("analyze-pipeline", ["my_app::analyze"], {"nope": 1}, 60)
        response = await client.invoke_sub_workflow(bad)
        # if let Some(err) = &response.error { eprintln!("remote workflow failed: {err}"); }
        assert response.error is not None and "document" in response.error
        # PeerError::Workflow: "The remote workflow ran but produced an error."
        with pytest.raises(PeerError) as info:
            await client.run_remote_workflow("analyze-pipeline", input={"nope": 1})
        assert info.value.kind is PeerErrorKind.WORKFLOW
        await client.close()


def test_rust_guide_resolve_peer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    # blazen_peer::auth::resolve_peer_token
    monkeypatch.setenv(TOKEN_ENV_VAR, "s3cret")
    assert TOKEN_ENV_VAR == "BLAZEN_PEER_TOKEN"
    assert resolve_token(None) == "s3cret"
    assert resolve_token("explicit") == "explicit"
    monkeypatch.delenv(TOKEN_ENV_VAR)
    assert resolve_token(None) is None


async def test_go_guide_server_client_run_and_errors() -> None:
    # server := blazen.NewPeerServer("node-b"); defer server.Close()
    server = PeerServer("node-b", registry=_peer_b_registry())
    await server.start("127.0.0.1:0")
    try:
        # client, err := blazen.ConnectPeerClient("http://peer-b.local:50051", "node-a")
        client = await PeerClient.connect(f"http://{server.address}", "node-a")
        try:
            # input := map[string]string{"document": "..."}
            input = {"document": "two words"}
            # result, err := client.RunRemoteWorkflow(ctx, "analyze-pipeline",
            #     []string{"my_app::analyze"}, input, 60*time.Second)
            result = await client.run_remote_workflow(
                "analyze-pipeline", ["my_app::analyze", "my_app::summarize"], input, timeout_secs=60
            )
            # fmt.Println(result.Event.DataJSON)
            assert json.loads(result.event.data_json)["result"] == {"words": 2}
            # client.RunRemoteWorkflowJSON(ctx, ..., `{"document":"..."}`, 60*time.Second)
            result = await client.run_remote_workflow(
                "analyze-pipeline", [], input_json='{"document":"a b c"}', timeout_secs=60
            )
            assert result.event_data == {"result": {"words": 3}}
            # "Pass 0 to defer to the peer's default deadline"
            result = await client.run_remote_workflow("analyze-pipeline", [], input, timeout_secs=0)
            assert result.result == {"words": 2}
            # errors.As(err, &peerErr) ... case "UnknownStep":
            with pytest.raises(PeerError) as info:
                await client.run_remote_workflow("analyze-pipeline", ["my_app::nope"], input)
            assert info.value.kind == "UnknownStep"
            # errors.As(err, &wfErr)  -- the remote workflow failed
            with pytest.raises(WorkflowError):
                await client.run_remote_workflow("analyze-pipeline", [], {"no": "document"})
        finally:
            # defer client.Close()
            await client.close()
        # "A closed client ... returns *blazen.ValidationError from subsequent method calls"
        with pytest.raises(ValidationError):
            await client.run_remote_workflow("analyze-pipeline")
    finally:
        await server.close()
        await server.close()  # "Idempotent"
    # "invoking Serve a second time on the same PeerServer returns a ValidationError"
    with pytest.raises(ValidationError):
        await server.serve("127.0.0.1:0")


def test_kotlin_guide_use_blocks_and_blocking_calls() -> None:
    server = PeerServer("worker-42", registry=_peer_b_registry())
    server.start_blocking("127.0.0.1:0")
    try:
        # PeerClient.connect("http://worker-42:7800", "orchestrator-1").use { client ->
        with PeerClient.connect_blocking(f"http://{server.address}", "orchestrator-1") as client:
            # client.nodeId()
            assert client.node_id == "orchestrator-1"
            # repeat(3) { i -> val result = client.runRemoteWorkflow(workflowName = ...,
            #     stepIds = listOf("my_app::analyze"), inputJson = """{"chunk":$i}""", ...)
            for i in range(3):
                result = client.run_remote_workflow_blocking(
                    workflow_name="analyze-pipeline",
                    step_ids=["my_app::analyze", "my_app::summarize"],
                    input_json=json.dumps({"document": "w " * (i + 1)}),
                    timeout_secs=30,
                )
                # println("chunk $i -> ${result.event.dataJson}")
                assert json.loads(result.event.data_json) == {"result": {"words": i + 1}}
            # catch (e: BlazenException.Peer) { when (e.kind) { "UnknownStep" -> ... } }
            with pytest.raises(PeerError) as info:
                client.run_remote_workflow_blocking("analyze-pipeline", ["my_app::nope"])
            assert info.value.kind == "UnknownStep"
    finally:
        # Runtime.getRuntime().addShutdownHook(Thread { server.close() })
        server.close_blocking()


def test_subworkflow_request_new_encodes_as_blazen_does() -> None:
    from pathlib import Path

    vectors = json.loads((Path(__file__).parent / "vectors" / "vectors.json").read_text())
    full = SubWorkflowRequest.new("wf-name", ["step.a", "step.b"], {"k": "v"}, 30)
    assert full.encode().hex() == vectors["client_req_invoke_full.postcard"]["hex"]
    keys = SubWorkflowRequest.new("wf", ["s"], {"b": 1, "a": {"d": 2, "c": 3}})
    assert keys.encode().hex() == vectors["client_req_invoke_key_order.postcard"]["hex"]
    for bad in ({"x": object()}, {"x": 1}):
        with pytest.raises(ValidationError):
            SubWorkflowRequest.new("wf", [], bad, -1 if bad == {"x": 1} else None)
