"""Serving pieces without a server: settings, the shared prediction store, and no torch in serving."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from serving_fixtures import ROOT

from serving.config import load_config
from serving.routes import hand_off
from serving.store import FeedbackExists, PredictionStore, StoreWriter, UnknownRequest


def test_config_env_over_file_over_defaults(tmp_path):
    path = tmp_path / "serving.toml"
    path.write_text('[serving]\nmodels = ["vit", "linformer"]\nmax_batch_size = 24\nvariant = "int8"\n')
    config = load_config({"GALAXYVIT_SERVING_CONFIG": str(path), "GALAXYVIT_MAX_BATCH_SIZE": "16"})
    assert config.models == ["vit", "linformer"] and config.variant == "int8"
    assert config.max_batch_size == 16 and config.max_latency_ms == 10_000  # env wins; default kept
    assert load_config({"GALAXYVIT_SERVING_CONFIG": str(path), "GALAXYVIT_MODELS": "a, b"}).models == ["a", "b"]
    with pytest.raises(ValueError, match="must not exceed max_batch_size"):
        load_config({"GALAXYVIT_MAX_IMAGES": "40"})
    with pytest.raises(ValueError, match="GALAXYVIT_MAX_IMAGES"):
        load_config({"GALAXYVIT_MAX_IMAGES": "many"})
    with pytest.raises(FileNotFoundError):
        load_config({"GALAXYVIT_SERVING_CONFIG": str(tmp_path / "missing.toml")})
    assert load_config({}).intra_op_spinning is False
    assert load_config({"GALAXYVIT_INTRA_OP_SPINNING": "on"}).intra_op_spinning is True
    with pytest.raises(ValueError, match="GALAXYVIT_INTRA_OP_SPINNING"):
        load_config({"GALAXYVIT_INTRA_OP_SPINNING": "sometimes"})
    path.write_text("[serving]\nmax_batch = 8\n")
    with pytest.raises(ValueError, match="unknown serving setting"):
        load_config({"GALAXYVIT_SERVING_CONFIG": str(path)})


def test_onnx_runtime_threads_spin_only_when_asked(tiny_models):
    from inference.runtime import load_model

    _, model_dirs = tiny_models
    for spinning, expected in ((False, "0"), (True, "1")):
        model = load_model("vit", model_dirs["vit"], device="cpu", threads=2, spinning=spinning)
        options = model.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
        assert options.intra_op_num_threads == 2


def test_a_card_naming_other_classes_than_the_model_outputs_is_refused(tiny_models, tmp_path):
    from galaxyvit.card import CardError, card_path, load_card
    from inference.runtime import load_model

    _, model_dirs = tiny_models
    folder = Path(shutil.copytree(model_dirs["vit"], tmp_path / "vit"))
    card = load_card(card_path(folder))
    card.class_names = ["elliptical", "spiral", "edge-on", "merger"]
    card.save(card_path(folder))  # the artifact still matches the card's sha256
    with pytest.raises(CardError, match="outputs 8 classes but its card names 4"):
        load_model("vit", folder, device="cpu", threads=1)


def test_store_is_bounded_shared_and_exact(tmp_path):
    db = tmp_path / "p.sqlite"
    a, b = PredictionStore(db, size=3), PredictionStore(db, size=3)  # two workers, one file
    a.add([("r1", "vit", 2), ("r2", "vit", 3)])
    b.add([("r3", "vit", 4), ("r4", "vit", 5)])
    assert len(a) == 3
    with pytest.raises(UnknownRequest):
        b.feedback("r1", 2)  # evicted
    assert b.feedback("r2", 3) == ("vit", 3, True)
    assert a.feedback("r3", 0) == ("vit", 4, False)
    with pytest.raises(FeedbackExists):
        a.feedback("r2", 3)
    a.add([(f"x{i}", "vit", 0) for i in range(5)])  # evicts r2, r3: their counts stay
    assert a.counts("vit") == {3: (1, 1), 0: (1, 0)}
    assert b.model_of("x4") == "vit"
    with pytest.raises(UnknownRequest):
        b.model_of("r2")  # evicted


def test_store_writer_writes_concurrent_requests_together(tmp_path):
    store, transactions = PredictionStore(tmp_path / "p.sqlite", size=100), []
    write = store.add_groups
    store.add_groups = lambda groups: (transactions.append(len(groups)), write(groups))[1]  # type: ignore[method-assign]
    writer = StoreWriter(store)

    async def requests() -> None:
        await asyncio.gather(*(writer.add([(f"r{i}", "vit", i % 8)], owner=f"key{i % 2}") for i in range(20)))

    asyncio.run(requests())
    assert len(store) == 20 and sum(transactions) == 20
    assert len(transactions) < 20  # the first request's write went alone; the 19 that came meanwhile, together
    assert store.model_of("r7", owner="key1") == "vit"  # every row is there, with its owner, once add returned
    store.db.close()
    broken = StoreWriter(store)  # a failed write fails its requests (the endpoint answers 500), not silently
    with pytest.raises(Exception, match="closed"):
        asyncio.run(broken.add([("x", "vit", 0)]))


def test_cutout_jpegs_are_handed_to_the_inference_process_and_others_decoded_in_the_api():
    def encoded(size: int, fmt: str) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (size, size), (30, 20, 10)).save(out, fmt)
        return out.getvalue()

    cutout, big, png = encoded(424, "JPEG"), encoded(1100, "JPEG"), encoded(424, "PNG")
    assert hand_off([cutout], 1) and hand_off([cutout, cutout], 1)
    assert not hand_off([cutout], 8)  # the 8 views are made from the crop, here
    assert not hand_off([big], 1) and not hand_off([cutout, png], 1)  # one big image would hold up the batch
    assert not hand_off([b"\xff\xd8\xff garbage"], 1)  # decoded here, refused as before


def test_serving_never_imports_torch_and_builds_only_when_asked(tiny_models, tmp_path):
    home, _ = tiny_models
    code = (
        "import sys, serving.service, serving.cli, inference.decode, inference.runtime, serving.metrics; "
        "import serving.store; "
        "import inference.explain, galaxyvit.overlay, inference.scoring, serving.uploads; "
        "from serving.inference import INFERENCE_SERVICE; "
        "assert 'GalaxyClassifier' not in vars(serving.service); "  # importing the entry module builds nothing
        "service = serving.service.GalaxyClassifier; "
        "models = service.find_dependent_by_name(INFERENCE_SERVICE).models; "
        "print(service.name, [str(m.tag) for m in models]); "
        "bad = [m for m in ('torch', 'transformers', 'training') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "BENTOML_HOME": str(home), "GALAXYVIT_MODELS": "vit,vitbase", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "galaxyvit ['galaxyvit-vit:latest', 'galaxyvit-vitbase:latest']"

    empty = {**env, "BENTOML_HOME": str(tmp_path), "GALAXYVIT_MODELS": ""}
    code = "import serving.service; print('imported'); serving.service.GalaxyClassifier"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=empty, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "imported" and "RuntimeError: no model to serve" in done.stderr, done.stderr[-2000:]


def test_galaxyvit_serve_command_line():
    from app.cli import SUBCOMMANDS
    from serving import cli

    assert SUBCOMMANDS["serve"][0] == "serving.cli"
    parser = __import__("argparse").ArgumentParser()
    cli.configure(parser)
    args = parser.parse_args(["--port", "3100", "--workers", "2", "--models", "vit,linformer", "--device", "cpu"])
    command, env = cli.serve_command(args)
    assert command[1:] == ["serve", "serving.service:GalaxyClassifier", "--host", "127.0.0.1", "--port", "3100"]
    assert env["GALAXYVIT_WORKERS"] == "2" and env["GALAXYVIT_MODELS"] == "vit,linformer"
    assert env["GALAXYVIT_DEVICE"] == "cpu" and "GALAXYVIT_VARIANT" not in {k for k in env if k not in os.environ}


def test_wait_ready_reports_a_server_that_never_answers_or_exits(tmp_path):
    from serving.process import ServerNotReady, free_port, wait_ready

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    log = tmp_path / "server.log"
    log.write_text("line one\nlast words of the server\n")
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ServerNotReady, match=r"not ready after 1 s:\n(.|\n)*last words of the server"):
            wait_ready(url, silent, timeout=1.0, log=log)
    finally:
        silent.kill()
        silent.wait()
    crashed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    crashed.wait()
    with pytest.raises(ServerNotReady, match="exited with code 3 before it was ready$"):
        wait_ready(url, crashed, timeout=10)


class SlowModels:
    """The inference dependency's interface (`to_async.infer`), answering each item with its own value once
    the test lets the call finish; records the items of every call."""

    def __init__(self) -> None:
        import asyncio

        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.to_async = self

    async def infer(self, items: list[dict]) -> list[int]:
        self.calls.append([item["x"] for item in items])
        await self.release.wait()
        return [item["x"] * 10 for item in items]


def test_inference_client_sends_the_items_of_waiting_requests_together():
    import asyncio

    from serving.inference import InferenceClient

    async def main() -> tuple[list, list]:
        models = SlowModels()
        client = InferenceClient(models, max_items=5, max_calls=1)
        first = asyncio.ensure_future(client.infer([{"x": 1}]))
        await asyncio.sleep(0)  # in flight: the others wait for it
        rest = [asyncio.ensure_future(client.infer([{"x": k}, {"x": k + 100}])) for k in (2, 3, 4)]
        gone = asyncio.ensure_future(client.infer([{"x": 5}]))
        await asyncio.sleep(0)
        gone.cancel()  # its request timed out while waiting: its item is not sent
        models.release.set()
        answers = await asyncio.gather(first, *rest)
        return models.calls, answers

    calls, answers = asyncio.run(main())
    assert answers == [[10], [20, 1020], [30, 1030], [40, 1040]]  # each request gets its own answers, in order
    assert calls == [[1], [2, 102, 3, 103], [4, 104]]  # at most max_items per call; the cancelled one dropped
