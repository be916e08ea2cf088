#!/usr/bin/env bash
# Screenshots of the real app under Xvfb, one per tab, the model card and the path field, into
# assets/screenshots/.
# Needs: apt-get install xvfb imagemagick xdotool; a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
out=assets/screenshots
mkdir -p "$out"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
# A private settings folder, so the shots do not depend on (or change) the user's settings.
export HOME=$(mktemp -d)
image=${1:-assets/samples/sneaker_9.png}
xvfb-run -a -s "-screen 0 1400x900x24" bash -c "
  ./target/release/convnext-explorer '$image' & P=\$!
  sleep 10
  # No window manager under Xvfb: give the window the keyboard explicitly.
  xdotool windowfocus \$(xdotool search --name 'ConvNeXt Explorer' | head -1)
  shot() { sleep \${2:-2}; import -window root '$out/'\$1.png; }
  click() { xdotool mousemove \$1 \$2 click 1; }
  # The model card, opened (and closed again).
  click 58 153; shot model_card; click 58 153; sleep 1
  # Feature maps: stage 1 selected, its top channel enlarged over the input.
  click 531 75; sleep 1; click 384 619; shot feature_maps
  # Attribution: Grad-CAM++ at stage 1.
  click 464 43; sleep 2; click 503 75; sleep 1; click 502 121; shot attribution 3
  # Receptive field of every stage for this image.
  click 562 43; sleep 1; click 355 131; shot receptive_field 6
  click 799 43; shot layer_scale
  click 874 43; sleep 1; click 428 75; shot profile 8
  click 953 43; shot architecture
  # Roadmap: what the 7x7 kernel changed.
  click 1041 43; sleep 1; click 440 537; shot roadmap
  # Open image with no desktop portal (as under Xvfb): the in-app path field.
  click 367 43; sleep 1; click 59 358; sleep 1; click 700 363; xdotool key End; xdotool type s; shot path_field
  kill \$P
"
ls -l "$out"
