#!/usr/bin/env bash
# Build llama-cpp-python's OpenAI-compatible server from source (CPU only) into the active Python,
# for tests/test_openai_adapter.py. No wheel is cached anywhere: CI rebuilds it from the sdist.
# About 8 minutes on an idle 2-core machine; 40+ when the cores are shared.
#   usage: scripts/build_llama_cpp_server.sh [python]   (default: the python on PATH)
set -euo pipefail
PYTHON="${1:-python}"
VERSION=0.3.36
if "$PYTHON" -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$VERSION')" 2>/dev/null \
   && "$PYTHON" -c "import llama_cpp.server.app" 2>/dev/null; then
  echo "llama-cpp-python $VERSION with its server is already installed"
  exit 0
fi
# Portable x86-64 build (no -march=native), no BLAS/GPU, and none of llama.cpp's own executables.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
"$PYTHON" -m pip install --no-cache-dir "llama-cpp-python[server]==$VERSION"
"$PYTHON" -c "import llama_cpp, llama_cpp.server.app; print('llama-cpp-python', llama_cpp.__version__, 'server ready')"
