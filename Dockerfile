# SDK worker image for beam-m2v: Beam's own Python 3.11 SDK image, at the Beam version that
# pyproject.toml pins, with this package installed. Use it as Dataflow's --sdk_container_image or
# as Flink's --environment_type=DOCKER --environment_config=IMAGE (or run it with --worker_pool
# beside a Flink task manager for --environment_type=EXTERNAL).
#
#   docker build -t REGISTRY/beam-m2v-worker:0.1.0 .
#
# Optionally bake a model folder (a path inside the build context) into the image. It lands in
# /opt/beam-m2v/model and BEAM_M2V_MODEL points at it; pass `--model /opt/beam-m2v/model`.
# The launcher loads the model too (to check it before the job starts), so it needs the same
# path: launch from this image, or keep models on gs:// / s3:// instead.
#
#   docker build -t REGISTRY/beam-m2v-worker:0.1.0-minilm64 --build-arg MODEL_DIR=models/m2v-minilm-64 .
#
# The launcher must run the same Python minor version (3.11) and Beam version as the image.

# Stage 1: pick the optional model out of the build context (an empty folder when MODEL_DIR is unset).
FROM apache/beam_python3.11_sdk:2.77.0 AS model
ARG MODEL_DIR=""
COPY . /tmp/context
RUN mkdir -p /opt/beam-m2v/model \
    && if [ -n "$MODEL_DIR" ]; then \
         test -f "/tmp/context/$MODEL_DIR/tokenizer.json" \
           || { echo "MODEL_DIR=$MODEL_DIR is not a model folder in the build context" >&2; exit 1; }; \
         cp -r "/tmp/context/$MODEL_DIR/." /opt/beam-m2v/model/; \
       fi

# Stage 2: the worker image.
FROM apache/beam_python3.11_sdk:2.77.0
COPY pyproject.toml README.md /tmp/beam-m2v/
COPY beam_m2v /tmp/beam-m2v/beam_m2v
COPY pipelines /tmp/beam-m2v/pipelines
# apache-beam 2.77.0 is already in the image and satisfies the pin, so pip keeps it.
# gcp and aws read gs:// and s3:// models and files; lance writes the fragments of a .lance output.
RUN pip install --no-cache-dir "/tmp/beam-m2v[gcp,aws,lance]" \
    && rm -rf /tmp/beam-m2v \
    && python -c "import apache_beam, beam_m2v, lance; assert apache_beam.__version__.startswith('2.77.')"
ARG MODEL_DIR=""
COPY --from=model /opt/beam-m2v/model /opt/beam-m2v/model
ENV BEAM_M2V_MODEL=${MODEL_DIR:+/opt/beam-m2v/model}
# Where gs:// and s3:// models are cached, once per machine (shared by every SDK process).
ENV BEAM_M2V_CACHE=/var/cache/beam-m2v
# The entrypoint stays the SDK image's /opt/apache/beam/boot.
