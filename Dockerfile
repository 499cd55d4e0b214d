# CPU image running bitlm-serve (API + dashboard) on port 8000.
#   docker build -t bitlm .
#   docker run -p 8000:8000 -e BITLM_TOKEN=secret \
#     -v "$PWD/outputs/run/model:/model:ro" -e BITLM_CKPT_PATH=/model bitlm
# Without BITLM_CKPT_PATH it serves the dashboard and /telemetry for a training run to publish to.
FROM python:3.11-slim

# the CPU build of torch (the default index's torch pulls several GB of CUDA packages)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /opt/bitlm
COPY pyproject.toml README.md ./
COPY LICENSE/ LICENSE/
COPY configs/ configs/
COPY src/ src/
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
 && pip install --no-cache-dir ".[serve]"

RUN useradd --create-home bitlm
USER bitlm
WORKDIR /home/bitlm
ENV BITLM_SAVE_DIR=/home/bitlm/saved_models
EXPOSE 8000
CMD ["bitlm-serve", "host=0.0.0.0", "port=8000"]
