# Hugging Face Spaces (Docker SDK): uid 1000 user, app in $HOME/app, port 7860.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH
WORKDIR $HOME/app

# Dependencies first, so a content or code change does not reinstall them.
# Wheels only: no compiler is needed, none is installed.
COPY --chown=user requirements.txt .
RUN pip install --user --no-cache-dir --only-binary=:all: -r requirements.txt

COPY --chown=user . .

# The Spaces proxy is the only peer: trust its X-Forwarded-For so rate limits
# see the real client. DATA_DIR is the one place the app writes.
ENV FORWARDED_ALLOW_IPS="*" \
    DATA_DIR=/home/user/app/data \
    BOOK_CONTENT_DIR=/home/user/app/book_content
RUN mkdir -p "$DATA_DIR"

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health', timeout=4)" || exit 1
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "7860"]
