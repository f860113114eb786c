"""MindSpore's execution context as the tools set it."""
from ppt_common.errors import UsageError


def set_context(mode: str, device: str = "CPU") -> None:
    """mode 'graph' (GRAPH_MODE) or 'pynative', on the device target CPU, GPU or Ascend. A target this MindSpore
    build cannot run is refused in one line (MindSpore itself answers with a traceback and its loader's log)."""
    import mindspore as ms
    check_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target=device)


def check_device(device: str) -> None:
    import mindspore as ms
    if device != "CPU" and not ms.hal.is_available(device):
        raise UsageError(f"--device {device}: this MindSpore build ({ms.__version__}) has no {device} backend here; "
                         f"install MindSpore for {device} (https://www.mindspore.cn/install), or use --device CPU")
