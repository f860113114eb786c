"""Official weights for `pretrained=True`: downloaded once with torch.hub's downloader, verified, cached, reused
offline.

The cache is torch.hub's own checkpoint folder ($TORCH_HOME/hub/checkpoints, TORCH_HOME defaulting to
$XDG_CACHE_HOME/torch or ~/.cache/torch), so a file a timm or torch user already downloaded is reused;
$MS_PPT_WEIGHTS_DIR overrides it. Hub weights timm already fetched are taken from the Hugging Face cache (HF_HUB_CACHE,
HF_HOME). $MS_PPT_WEIGHTS_URL, if set, is a mirror folder that replaces the publisher's
(the file names stay the same). A download becomes a cache entry only once it is verified: its sha256 against the
published one, or, where none is published, by reading it strictly; a failed or interrupted download leaves
nothing behind.
"""
import os
import re
import uuid
from typing import Optional
from urllib.error import HTTPError, URLError

from convert.io import CheckpointError
from ppt_common.config import PRETRAINED, WeightsSource, get_arch

LOCAL_FILE_HINT = ("or download the file yourself and pass it as checkpoint=PATH (--checkpoint PATH; train_ms.py: "
                   "--resume PATH)")


class PretrainedError(CheckpointError):
    """Official weights that cannot be had: one line saying why and what to do."""


def weights_dir() -> str:
    if os.environ.get("MS_PPT_WEIGHTS_DIR"):
        return os.environ["MS_PPT_WEIGHTS_DIR"]
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(torch_home, "hub", "checkpoints")


def source_of(name: str) -> WeightsSource:
    get_arch(name)
    if name not in PRETRAINED:
        raise PretrainedError(f"no official weights are registered for {name} (registered: "
                              f"{', '.join(sorted(PRETRAINED))}): pass checkpoint=PATH "
                              "(--checkpoint PATH; train_ms.py: --resume PATH)")
    return PRETRAINED[name]


HUB_FILE = re.compile(r"^https://huggingface\.co/([^/]+/[^/]+)/resolve/main/([^/]+)$")


def hf_hub_cache() -> str:
    """The Hugging Face hub's cache folder, as huggingface_hub resolves it (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(hf_home, "hub")


def cached_weights(name: str) -> Optional[str]:
    """The cached file of a model's official weights, or None (never downloads): ours, or for hub weights the one
    timm already fetched into the Hugging Face cache."""
    if name not in PRETRAINED:
        return None
    path = os.path.join(weights_dir(), PRETRAINED[name].file_name)
    if os.path.isfile(path):
        return path
    hub_file = HUB_FILE.match(PRETRAINED[name].url)
    if hub_file:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        found = try_to_load_from_cache(hub_file.group(1), hub_file.group(2), cache_dir=hf_hub_cache())
        return found if isinstance(found, str) and os.path.isfile(found) else None
    return None


def download_url(source: WeightsSource) -> str:
    mirror = os.environ.get("MS_PPT_WEIGHTS_URL")
    return mirror.rstrip("/") + "/" + source.file_name if mirror else source.url


def pretrained_weights(name: str, progress: bool = True) -> str:
    """Path of the model's official weights: the cached file, or a verified fresh download."""
    cached = cached_weights(name)
    if cached:
        return cached
    source = source_of(name)
    folder = weights_dir()
    target = os.path.join(folder, source.file_name)
    url = download_url(source)
    try:
        from torch.hub import download_url_to_file
    except ImportError:
        raise PretrainedError(f"downloading {name}'s weights needs the torch extra (pip install 'ms-ppt[torch]'), "
                              + LOCAL_FILE_HINT) from None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise PretrainedError(f"cannot create the weights cache {folder} ({e.strerror or e}): set MS_PPT_WEIGHTS_DIR "
                              "to a writable folder, " + LOCAL_FILE_HINT) from None
    download = os.path.join(folder, f".{uuid.uuid4().hex}.{source.file_name}")  # keeps the suffix: the format
    try:
        download_url_to_file(url, download, hash_prefix=source.sha256, progress=progress)
        if source.sha256 is None:  # nothing published to check against: prove the file whole by reading it
            from convert import load_checked
            load_checked(download, name)
        os.replace(download, target)
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise
        raise PretrainedError(f"the file downloaded from {url} does not match its published sha256 "
                              f"({source.sha256}...): a truncated, interrupted or altered download; nothing was "
                              "cached. Retry, " + LOCAL_FILE_HINT) from None
    except CheckpointError as e:
        raise PretrainedError(f"the file downloaded from {url} is not a whole {name} checkpoint ({e}); nothing "
                              "was cached. Retry, " + LOCAL_FILE_HINT) from None
    except URLError as e:  # HTTPError included
        why = f"the server answered {e.code} {e.reason}" if isinstance(e, HTTPError) else str(e.reason)
        raise PretrainedError(f"cannot download {name}'s weights from {url} ({why}) and they are not cached in "
                              f"{folder}: connect to the internet, set MS_PPT_WEIGHTS_URL to a mirror, "
                              + LOCAL_FILE_HINT) from None
    except OSError as e:
        raise PretrainedError(f"cannot write the weights cache {folder} ({e.strerror or e}): set MS_PPT_WEIGHTS_DIR "
                              "to a writable folder, " + LOCAL_FILE_HINT) from None
    finally:
        if os.path.exists(download):
            os.remove(download)
    return target
