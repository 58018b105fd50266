#!/bin/sh
# `python -m bot --check` as deploy/findimage.service runs the bot: as its dynamic user, in
# its directories, with its environment file, under the same protection. So the check proves
# what the service will meet, and a first download of the weights lands in the service's
# cache (/var/cache/findimage) and the ONNX export in its state (/var/lib/findimage/models),
# not in root's home or a throwaway DATA_DIR. Run as root: sudo sh deploy/check-as-service.sh
# tests/test_deploy.py keeps these properties equal to the unit's.
exec systemd-run --quiet --wait --pipe --collect --service-type=exec \
    --property=User=findimage --property=DynamicUser=yes \
    --property=WorkingDirectory=/opt/findimage \
    --property=EnvironmentFile=/etc/findimage/findimage.env \
    --property=StateDirectory=findimage --property=CacheDirectory=findimage \
    --property="Environment=DATA_DIR=/var/lib/findimage HF_HOME=/var/cache/findimage/huggingface XDG_CACHE_HOME=/var/cache/findimage" \
    --property=Environment=PYTHONUNBUFFERED=1 \
    --property=ProtectSystem=strict --property=ProtectHome=yes --property=PrivateTmp=yes \
    /opt/findimage/.venv/bin/python -m bot --check "$@"
