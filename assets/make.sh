#!/usr/bin/env bash
# The README's pictures, from the shipped checkpoints: bash assets/make.sh (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
O=out/assets
P="a red circle moving right on a dark background|a blue square moving down on a grey background"
P="$P|a yellow triangle moving left on a dark background|a green circle moving up on a grey background"
python sample.py --ckpt ckpt/teacher_tiny.pt --steps 16 --prompt "$P" --out $O/teacher
python sample.py --ckpt ckpt/dmd_tiny.pt --steps 1 --ffe false --prompt "$P" --out $O/dmd
python sample.py --ckpt ckpt/asd_tiny.pt --steps 1 --ffe false --prompt "$P" --out $O/asd
python sample.py --ckpt ckpt/asd_tiny.pt --steps 1 --prompt "$P" --out $O/asd
cp $O/teacher/sample_teacher16.gif assets/teacher_16.gif
cp $O/dmd/sample_1.gif assets/dmd_1.gif
cp $O/asd/sample_1.gif assets/asd_1.gif
cp $O/asd/sample_1star.gif assets/asd_1star.gif
# image-to-video: the first frame of a world clip (assets/first_frame.png) and its caption
mkdir -p $O/i2v
python -c "import data, imageio.v3 as iio, sample
videos, captions, _, _ = data.make_batch([[4, 2]], data.WorldConfig(p_two=0))
iio.imwrite('assets/first_frame.png', sample.to_uint8(videos[0, 0]))
open('$O/i2v/caption.txt', 'w').write(captions[0])"
C=$(cat $O/i2v/caption.txt)
python sample.py --ckpt ckpt/asd_tiny.pt --steps 1 --first_frame assets/first_frame.png --prompt "$C" --out $O/i2v
python sample.py --ckpt ckpt/teacher_tiny.pt --steps 16 --first_frame assets/first_frame.png --prompt "$C" --out $O/i2v
cp $O/i2v/sample_1star.gif assets/i2v_asd_1star.gif
cp $O/i2v/sample_teacher16.gif assets/i2v_teacher_16.gif
# prompt switch at frame 16 of 32: the cached context kept, and recomputed under the new caption
A="a red circle moving right on a dark background"
B="16:a blue circle moving left on a dark background"
python sample.py --steps 1 --frames 32 --n 2 --prompt "$A" --switch "$B" --recache false --out $O/keep
python sample.py --steps 1 --frames 32 --n 2 --prompt "$A" --switch "$B" --recache true --out $O/recache
cp $O/keep/sample_1star.gif assets/switch_keep.gif
cp $O/recache/sample_1star.gif assets/switch_recache.gif
# the 20000-step teacher (docs/results.md §6.2): world captions, and two-object captions
python sample.py --ckpt ckpt/teacher_20000.pt --steps 16 --n 6 --seed 1 --out $O/t20k
T="a red circle moving left and a blue square moving up on a dark background"
T="$T|a yellow triangle moving right and a cyan circle moving down on a grey background"
T="$T|a green square moving down and a purple triangle moving left on a dark background"
python sample.py --ckpt ckpt/teacher_20000.pt --steps 16 --n 3 --seed 1 --prompt "$T" --out $O/t20k_two --compose false
cp $O/t20k/sample_teacher16.png assets/teacher_20000.png
cp $O/t20k_two/sample_teacher16.png assets/teacher_20000_two_objects.png
# the 28000-step teacher on two-object captions (the first six of clips [79, i]): plain CFG 3 | composed guidance
T=$(python -c "import data; print('|'.join(data.make_clip([79, i], data.WorldConfig(p_two=1.0))[1] for i in range(6)))")
python sample.py --ckpt ckpt/teacher_28000.pt --steps 16 --n 6 --seed 1 --prompt "$T" --out $O/t28k_cfg --compose false
python sample.py --ckpt ckpt/teacher_28000.pt --steps 16 --n 6 --seed 1 --prompt "$T" --out $O/t28k_compose
python -c "import imageio.v3 as iio, numpy as np
a, b = (iio.imread(f'$O/{d}/sample_teacher16.png') for d in ('t28k_cfg', 't28k_compose'))
iio.imwrite('assets/teacher_28000_composed.png', np.concatenate([a, np.full((a.shape[0], 32, 3), 255, np.uint8), b], 1))"
echo "wrote assets/*.gif assets/*.png"
