#!/usr/bin/env bash
# Screenshots of the real app under Xvfb, one per tab, the model card and the path field, the
# Compare tab's CKA and weight diff, the roadmap's kernel ERFs and a 1024x640 window, into
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
  # Profile: run it (the first run also measures the machine for the roofline).
  click 874 43; sleep 1; click 428 75; shot profile 12
  click 953 43; shot architecture
  # Roadmap: what the 7x7 kernel changed.
  click 1041 43; sleep 1; click 440 537; shot roadmap
  # Open image with no desktop portal (as under Xvfb): the in-app path field.
  click 367 43; sleep 1; click 59 358; sleep 1; click 700 363; xdotool key End; xdotool type s; shot path_field
  kill \$P
"
# The app at a size (WxH), started with ARGS, after ACTIONS (xdotool, as above), into NAME.png.
app_shot() {
  local size=$1 args=$2 actions=$3 name=$4
  xvfb-run -a -s "-screen 0 ${size}x24" bash -c "
    ./target/release/convnext-explorer $args & P=\$!
    sleep 10
    W=\$(xdotool search --name 'ConvNeXt Explorer' | head -1)
    xdotool windowsize \$W ${size/x/ }; xdotool windowmove \$W 0 0; xdotool windowfocus \$W
    sleep 2
    click() { xdotool mousemove \$1 \$2 click 1; }
    $actions
    import -window root '$out/$name.png'
    kill \$P
  "
}
# Compare: the shipped model against itself over the samples (CKA), a cell picked.
app_shot 1400x900 assets/samples/bag_18.png \
  "click 717 43; sleep 1; click 477 75; sleep 1; click 327 107; sleep 1; click 790 107; sleep 10; click 571 209; sleep 2; xdotool mousemove 700 330; sleep 1" \
  compare_cka
# Compare: what changed from a fixture checkpoint to its tuned copy (listed from the user's data
# folder, as a downloaded model would be).
export XDG_DATA_HOME=$(mktemp -d)
mkdir -p "$XDG_DATA_HOME/convnext-explorer/weights"
cp tests/fixtures/checkpoints/timm_v1_tuned.safetensors "$XDG_DATA_HOME/convnext-explorer/weights/"
app_shot 1400x900 "--weights tests/fixtures/checkpoints/timm_v1.safetensors assets/samples/bag_18.png" \
  "click 717 43; sleep 1; click 630 75; sleep 1; click 627 107; sleep 1; click 716 157; sleep 1; click 1006 107; sleep 3; xdotool mousemove 1300 800" \
  compare_diff
unset XDG_DATA_HOME
# Roadmap: the last stage's ERF for kernels 3x3 to 11x11 (a minute of work), scrolled to it.
app_shot 1400x900 assets/samples/sneaker_9.png \
  "click 1041 43; sleep 1; click 330 731; sleep 1; click 373 754; sleep 75; xdotool mousemove 800 600; for i in \$(seq 15); do xdotool click 5; sleep 0.1; done; sleep 2" \
  roadmap_erf
# Faithfulness: every method's map and curves for sneaker_9 at stages.1.
app_shot 1400x900 assets/samples/sneaker_9.png \
  "click 1128 43; sleep 1; click 426 132; sleep 15; xdotool mousemove 1300 800" \
  faithfulness
# Channel: what stages.1 channel 0 looks for (optimised on opening), then the layer's atlas.
# (A private cache folder: the atlas is made, not read from an earlier run's cache.)
CONVNEXT_CACHE_DIR=$(mktemp -d) app_shot 1400x900 assets/samples/bag_18.png \
  "click 1210 43; sleep 2; click 502 108; sleep 15; click 462 481; sleep 150; xdotool mousemove 1300 880" \
  channel
# A random-weights ConvNeXt-T's optimised images (noise) beside the shipped model's.
vis=$(mktemp -d)
./target/release/convnext-explorer visualize --variant convnext_tiny --layer stages.2 --channel 0,1,2,3 --out "$vis/t" >/dev/null
./target/release/convnext-explorer visualize --layer stages.2 --channel 0,1,2,3 --out "$vis/s" >/dev/null
convert \( "$vis"/t/stages.2_{0,1,2,3}.png +append \) \
  \( "$vis"/s/stages.2_{0,1,2,3}.png -filter point -resize 224x224 +append \) \
  -append "$out/visualize_random_tiny.png"
# A laptop-sized window: the tab bar wraps; the first picture is Grad-CAM at stages.1.
# (Fresh settings: it opens on Feature maps, not on the tab the shots above left.)
HOME=$(mktemp -d) app_shot 1024x640 assets/samples/sneaker_9.png "sleep 1" small_window
ls -l "$out"
