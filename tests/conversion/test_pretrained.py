"""pretrained=True: official weights downloaded once (from a local HTTP server here), verified, cached, reused
offline; every failure is one clear error and leaves nothing in the cache."""
import hashlib
import http.server
import os
import threading

import mindspore as ms
import numpy as np
import pytest

import ms_ppt
import pt_reference
from conftest import DEIT_TINY, need_shared_data
from convert import hub
from convert.hub import PretrainedError
from ppt_common import config

NAME = "deit_tiny_patch16_224"


class Server:
    """Serves `files` (name -> bytes; default: the shared DeiT-Tiny file as good.pth, and half of it with the full
    Content-Length as truncated.pth) under /deit/ and any other folder, and 404 for any other name."""

    def __init__(self, files=None):
        data = open(DEIT_TINY, "rb").read()
        files = files or {"good.pth": data, "truncated.pth": data}
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                self.requests.append(handler.path)
                name = handler.path.rsplit("/", 1)[-1]
                if name not in files:
                    handler.send_error(404, "Not Found")
                    return
                body = files[name]
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body[:len(body) // 2] if name.startswith("truncated") else body)

            def log_message(handler, *args):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/deit/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch, tmp_path):
    """The official source of DeiT-Tiny pointed at the local server (with the served file's real sha256), and an
    empty cache."""
    need_shared_data()
    sha256 = hashlib.sha256(open(DEIT_TINY, "rb").read()).hexdigest()
    srv = Server()
    monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(srv.url + "good.pth", sha256))
    monkeypatch.setenv("MS_PPT_WEIGHTS_DIR", str(tmp_path / "cache"))
    yield srv
    srv.stop()


def cache_files(tmp_path):
    folder = tmp_path / "cache"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


@pytest.mark.slow
def test_first_download_is_cached_and_reused_offline_with_the_same_logits_as_the_local_file(server, tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = ms.Tensor(np.random.RandomState(0).randn(2, 3, 224, 224))
    fresh = ms_ppt.create_model(NAME, pretrained=True, dtype="float64")
    assert cache_files(tmp_path) == ["good.pth"] and len(server.requests) == 1
    server.stop()  # offline from now on
    cached = ms_ppt.create_model(NAME, pretrained=True, dtype="float64")
    local = ms_ppt.create_model(NAME, checkpoint=DEIT_TINY, dtype="float64")
    want = local(x).asnumpy()
    np.testing.assert_array_equal(fresh(x).asnumpy(), want)
    np.testing.assert_array_equal(cached(x).asnumpy(), want)
    reference = pt_reference.create_model(NAME, pretrained=True)
    assert reference.head.weight.detach().numpy().tobytes() == local.head.weight.asnumpy().astype(np.float32).tobytes()


def test_a_truncated_download_fails_the_hash_and_caches_nothing(server, tmp_path, monkeypatch):
    good = config.PRETRAINED[NAME]
    monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(server.url + "truncated.pth", good.sha256))
    with pytest.raises(PretrainedError, match="does not match its published sha256.*nothing was cached.*checkpoint=PATH"):
        hub.pretrained_weights(NAME, progress=False)
    assert cache_files(tmp_path) == []


def test_a_wrong_hash_caches_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(server.url + "good.pth", "a1311bcf"))
    with pytest.raises(PretrainedError, match="a1311bcf"):
        hub.pretrained_weights(NAME, progress=False)
    assert cache_files(tmp_path) == []


def test_a_missing_file_on_the_server_says_what_the_server_answered(server, tmp_path, monkeypatch):
    monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(server.url + "gone.pth", None))
    with pytest.raises(PretrainedError, match=r"the server answered 404.*not cached.*checkpoint=PATH \(--checkpoint "
                                             r"PATH; train_ms.py: --resume PATH\)"):  # each tool's own option
        ms_ppt.create_model(NAME, pretrained=True)
    assert cache_files(tmp_path) == []


def test_offline_and_not_cached_is_one_clear_error(server, tmp_path):
    server.stop()
    with pytest.raises(PretrainedError, match="cannot download deit_tiny_patch16_224's weights.*MS_PPT_WEIGHTS_URL"):
        hub.pretrained_weights(NAME, progress=False)


def test_a_cache_that_cannot_be_written_is_named(server, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("MS_PPT_WEIGHTS_DIR", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(PretrainedError, match="cannot create the weights cache.*MS_PPT_WEIGHTS_DIR"):
        hub.pretrained_weights(NAME, progress=False)


def test_a_mirror_serves_the_same_file_names(server, tmp_path, monkeypatch):
    monkeypatch.setitem(config.PRETRAINED, NAME,
                        config.WeightsSource("https://unreachable.invalid/deit/good.pth", config.PRETRAINED[NAME].sha256))
    monkeypatch.setenv("MS_PPT_WEIGHTS_URL", server.url)
    assert os.path.basename(hub.pretrained_weights(NAME, progress=False)) == "good.pth"
    assert server.requests == ["/deit/good.pth"]


def test_the_cache_follows_torch_hubs_convention(monkeypatch, tmp_path):
    monkeypatch.delenv("MS_PPT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert hub.weights_dir() == str(tmp_path / "th" / "hub" / "checkpoints")
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.weights_dir() == str(tmp_path / "xdg" / "torch" / "hub" / "checkpoints")
    assert config.PRETRAINED[NAME].file_name == "deit_tiny_patch16_224-a1311bcf.pth"


@pytest.mark.slow
def test_the_demo_uses_cached_official_weights_and_says_so(tmp_path):
    """Offline-safe first command: with the weights in the cache the demo evaluates the real model (without them it
    runs on random weights and says how to get real ones: test_eval_scripts' demo test)."""
    need_shared_data()
    import shutil
    import subprocess
    import sys
    from conftest import ROOT
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(DEIT_TINY, cache / config.PRETRAINED[NAME].file_name)
    script = [sys.executable, os.path.join(ROOT, "scripts", "eval_ms.py"), "--mode", "pynative", "--throughput-runs",
              "0", "--quiet"]
    cached = subprocess.run(script, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MS_PPT_WEIGHTS_DIR": str(cache)})
    assert cached.returncode == 0, cached.stderr
    assert "with the official weights" in cached.stdout and "RANDOM" not in cached.stdout


def test_mindcv_pretrained_takes_the_official_weights(server, tmp_path):
    import mindcv
    model = mindcv.create_model("ppt_deit_tiny_patch16_224", pretrained=True)
    local = ms_ppt.create_model(NAME, checkpoint=DEIT_TINY)
    assert model.head.weight.asnumpy().tobytes() == local.head.weight.asnumpy().tobytes()
    assert cache_files(tmp_path) == ["good.pth"]


def test_without_a_published_hash_a_download_is_cached_only_if_it_reads_whole(server, tmp_path, monkeypatch):
    """DeiT-III's release files carry no hash: the download is read strictly before it enters the cache."""
    assert config.PRETRAINED["deit3_small_patch16_224"].url.endswith("/deit/deit_3_small_224_1k.pth")
    assert config.PRETRAINED["deit3_small_patch16_224"].sha256 is None
    monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(server.url + "truncated.pth"))
    with pytest.raises(PretrainedError, match="is not a whole deit_tiny_patch16_224 checkpoint.*nothing was cached"):
        hub.pretrained_weights(NAME, progress=False)
    assert cache_files(tmp_path) == []
    monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(server.url + "good.pth"))
    assert os.path.basename(hub.pretrained_weights(NAME, progress=False)) == "good.pth"


def test_every_model_names_the_weights_its_preprocessing_was_made_for():
    """Each registered name has an official source, each cached under its own file name; for ViT and CLIP it is
    timm's default weights for the name (whose pretrained_cfg the preprocessing follows), on the hub."""
    from timm.models._registry import get_pretrained_cfg
    timm_names = [n for n in config.MODEL_CONFIGS if get_pretrained_cfg(n) is not None]
    assert sorted(config.PRETRAINED) == sorted(timm_names)  # deit_{tiny,small}_patch16_384 have no weights
    assert len({s.file_name for s in config.PRETRAINED.values()}) == len(config.PRETRAINED)
    for name, source in config.PRETRAINED.items():
        timm_cfg = get_pretrained_cfg(name)
        if "huggingface.co" in source.url:
            assert f"/{timm_cfg.hf_hub_id}/resolve/main/model.safetensors" in source.url, name
        else:
            assert source.url == timm_cfg.url, name


def test_hub_safetensors_are_cached_under_their_repository_name(tmp_path, monkeypatch):
    """timm's hub files are all called model.safetensors: each is cached as <repo>.safetensors, read strictly."""
    need_shared_data()
    import convert
    convert.ms2pt(DEIT_TINY, str(tmp_path / "model.safetensors"), model=NAME)
    srv = Server({"model.safetensors": (tmp_path / "model.safetensors").read_bytes()})
    try:
        monkeypatch.setenv("MS_PPT_WEIGHTS_DIR", str(tmp_path / "cache"))
        monkeypatch.setitem(config.PRETRAINED, NAME, config.WeightsSource(
            srv.url + "timm/deit_tiny_patch16_224.fb_in1k/resolve/main/model.safetensors",
            cache_name="deit_tiny_patch16_224.fb_in1k.safetensors"))
        model = ms_ppt.create_model(NAME, pretrained=True)
        assert cache_files(tmp_path) == ["deit_tiny_patch16_224.fb_in1k.safetensors"]
        local = ms_ppt.create_model(NAME, checkpoint=DEIT_TINY)
        assert model.head.weight.asnumpy().tobytes() == local.head.weight.asnumpy().tobytes()
    finally:
        srv.stop()


def test_hub_weights_timm_already_fetched_are_taken_from_the_hugging_face_cache(tmp_path, monkeypatch):
    """No download when the file is in the Hugging Face cache (HF_HOME), where timm puts what it fetches."""
    snapshot = tmp_path / "hf" / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0123abcd")
    (snapshot / "snapshots" / "0123abcd").mkdir(parents=True)
    (snapshot / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("MS_PPT_WEIGHTS_DIR", str(tmp_path / "cache"))
    path = hub.pretrained_weights("vit_tiny_patch16_224", progress=False)
    assert path == str(snapshot / "snapshots" / "0123abcd" / "model.safetensors")
    assert cache_files(tmp_path) == []
