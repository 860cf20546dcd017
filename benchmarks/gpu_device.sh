#!/usr/bin/env bash
# The GPU check on a bare CUDA machine without network, from the kit of benchmarks/gpu_kit.py:
#     bash benchmarks/gpu_device.sh KIT [OUT [COMMAND...]]
# KIT holds the kit's parts (part.NN); .gpu/SHA256SUMS (their sums) is read from this repository copy. The parts
# are checked, joined and unpacked, every file checked again, the onnxruntime-gpu wheel installed with pip (no
# index, no dependencies: the machine's numpy, tokenizers, scikit-learn, onnx and CUDA libraries serve), and
# `python -m benchmarks.gpu` runs on the kit's bundles and records. Its figures (gpu.json) and log go to OUT.
# A COMMAND runs in that prepared environment instead of the check (to look into what the check found).
# GPU_REHEARSE=1 runs it all with CPU standing in for CUDA (a rehearsal of this script; nothing is saved).
set -euo pipefail
kit=$(cd "$1" && pwd)
out=$(mkdir -p "${2:-${OUT:-/tmp/gpu-out}}" && cd "${2:-${OUT:-/tmp/gpu-out}}" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
site=${GPU_SITE:-/tmp/car-onnx-gpu-site}
python=${PYTHON:-python3}

cd "$kit"
cp "$repo/.gpu/SHA256SUMS" parts.sha256
sha256sum --quiet -c parts.sha256
rm -rf unpacked && mkdir unpacked
cat part.* | tar -x -C unpacked
(cd unpacked/kit && sha256sum --quiet -c SHA256SUMS)
echo "kit: $(wc -l < parts.sha256) parts and $(wc -l < unpacked/kit/SHA256SUMS) files, sha256 checked"

rm -rf "$site"
"$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" unpacked/kit/wheels/*.whl
ln -sfn "$repo/export" "$site/car_onnx_export"
# onnxruntime looks for pip's nvidia-* CUDA libraries beside itself, and they are in the machine's environment:
# add their folders to the loader's path (nothing to add where there are none).
libs=$("$python" - <<'EOF'
import glob, os, site
dirs = {os.path.dirname(f) for p in site.getsitepackages() for f in glob.glob(f"{p}/nvidia/**/lib*.so*", recursive=True)}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" PYTHONPATH="$site" PYTHONUNBUFFERED=1
"$python" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.__file__, o.get_available_providers())"

cd "$repo"
if (($# > 2)); then "${@:3}"; exit; fi
"$python" -m benchmarks.gpu_kit unpack-iqs "$kit/unpacked/kit/iqs" "$kit/unpacked/iqs-full"
rehearse=()
[[ "${GPU_REHEARSE:-}" == 1 ]] && rehearse=(--rehearse-on-cpu --quick)
rm -f benchmarks/results/gpu.json
"$python" -m benchmarks.gpu "${rehearse[@]}" --default "$kit/unpacked/kit/default" --iqs "$kit/unpacked/iqs-full" \
    --records "$kit/unpacked/kit/records.jsonl" --work "$kit/work" 2>&1 | tee "$out/gpu.log"
if [[ -f benchmarks/results/gpu.json ]]; then cp benchmarks/results/gpu.json "$out/"; fi
echo "done: $out"
