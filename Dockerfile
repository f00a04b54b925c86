# CPU image serving one finished transferlab run:
#   docker build -t transferlab .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/demo:/run:ro" transferlab
# then open http://localhost:8000/ (API documentation at /docs).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Never reach a model hub from inside the container: everything comes from the run folder.
    HF_HUB_OFFLINE=1 \
    TRANSFERLAB_OFFLINE=1

WORKDIR /app

# CPU-only torch first, from PyTorch's CPU index: the default wheels carry CUDA (gigabytes).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.3,<3" "torchvision>=0.18,<1"

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --create-home --uid 10001 transferlab

# The run folder is mounted at /run (read-only is fine; for --engine onnx, run
# `transferlab export RUN --format onnx` on the host first so model/model.onnx exists).
USER transferlab
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# 0.0.0.0 inside the container only: publish the port deliberately with -p.
CMD ["transferlab", "serve", "/run", "--host", "0.0.0.0", "--port", "8000"]
