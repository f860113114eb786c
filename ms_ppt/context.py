"""MindSpore's execution context as the tools set it."""


def set_context(mode: str, device: str = "CPU") -> None:
    """mode 'graph' (GRAPH_MODE) or 'pynative', on the device target CPU, GPU or Ascend."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target=device)
