# Source this on a lent GPU machine (its python3 has torch but not our other dependencies):
#   . benchmarks/gpu_env.sh
# Installs the wheels carried in .whl/ into /tmp/site (see the device notes: pip download for
# cp312/manylinux), unpacks the xz-compressed ffmpeg that imageio-ffmpeg's wheel carried (the
# whole wheel would not fit the 64 MiB the working tree may carry), and exports PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >/dev/null 2>&1 || { echo "wheel install failed"; return 1; }
for packed in .whl/ffmpeg-*.xz; do
  [ -e "$packed" ] || continue
  binary=/tmp/site/imageio_ffmpeg/binaries/$(basename "$packed" .xz)
  python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$packed" "$binary"
  chmod +x "$binary"
done
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
python3 -c "import imageio_ffmpeg, diffusers, peft, typer; print('gpu_env:', imageio_ffmpeg.get_ffmpeg_version())"
