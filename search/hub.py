"""Before a model download: are the weights cached, and if not, can the hub be reached?

Offline, huggingface_hub retries each file for about 50 s and logs dozens of lines
before open_clip gives up. Asking first (a cache lookup, then one TCP connect with a
short timeout) turns that into one sentence within seconds.
"""

from __future__ import annotations

import socket

from yarl import URL

from .errors import ModelHubUnreachable

CONNECT_TIMEOUT = 5.0


def check_weights_reachable(model: str, pretrained: str | None) -> None:
    """ModelHubUnreachable naming the model and the hub if its weights can be neither read
    from the local cache nor downloaded; nothing when either is possible."""
    if model.startswith("local-dir:"):
        return
    if model.startswith("hf-hub:"):
        repo = model[len("hf-hub:"):]
    else:
        from open_clip import pretrained as zoo  # imports torch: the model's stage already

        if pretrained is None:
            return
        cfg = zoo.get_pretrained_cfg(model, pretrained) or {}
        repo = str(cfg.get("hf_hub") or "").strip("/")
        if not repo:  # a weights file, or weights served from a plain URL
            return
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(repo, filename), str):
            return
    endpoint = URL(constants.ENDPOINT)
    host, port = endpoint.host or "", endpoint.port or 443
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return
    except OSError as e:
        why = e.strerror or type(e).__name__
    raise ModelHubUnreachable(
        f"The CLIP weights for '{model}' are not downloaded yet and the model hub at "
        f"{endpoint.scheme}://{host} cannot be reached ({why}); connect this machine once, "
        "or set CLIP_MODEL=local-dir:/path to a saved model.")
