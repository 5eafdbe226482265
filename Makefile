# make install: .venv with this checkout's eva02 on the shared pinned stack (tools/install.sh, tools/build_env.sh)
# make test:    the test suite (installs first if needed)
# make demo:    the main job on the embedded default data (installs first if needed)
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: install install-xformers test test-all demo demo-backbone demo-mim bench clean

install:
	@bash tools/install.sh

# Optional: xformers kernels (GPU only; attn_impl="xformers"). SDPA is the default and needs nothing extra.
install-xformers: install
	$(PY) -m pip install --no-deps xformers  # --no-deps: it must not replace the pinned torch
	$(PY) -c "from eva02.backbone.trv import xformers_available as a; print('xformers usable:', a())"

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Also the slower end-to-end runs (marked `slow`).
test-all: install
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# The main job: detection demo (train + COCO eval + drawn predictions), the evaluator check on a real
# annotated photo, the segmentation demo, its TrV started from the detection demo's, then MIM pre-training of a
# Ti against a random teacher. Each run writes TensorBoard events and curves.png.
demo: install
	$(PY) tools/train_det.py --config-file configs/demo/eva02_Ti_det.py
	$(PY) tools/check_det_eval.py --output output/voc_photo_eval
	$(PY) tools/train_seg.py --config-file configs/demo/eva02_Ti_seg.py --output output/demo/seg \
	    model.backbone.pretrained=output/demo_det/model_final.pth
	$(PY) tools/infer_seg.py --config-file configs/demo/eva02_Ti_seg.py --weights "$$(cat output/demo/seg/last_checkpoint)" \
	    --input output/demo/shapes_data/images/validation --output output/demo/seg/predictions
	$(PY) tools/pretrain_mim.py --demo --output output/demo_mim
	@echo "curves: output/demo_det/curves.png output/demo/seg/curves.png output/demo_mim/curves.png;" \
	    "all runs in TensorBoard: $(PY) -m tensorboard.main --logdir output"

# Smaller demos: backbone PCA picture of a real photo; MIM pre-training of EVA-02-Ti against a random teacher.
demo-backbone: install
	$(PY) tools/demo_backbone.py --output output/demo_backbone

demo-mim: install
	$(PY) tools/pretrain_mim.py --demo --output output/demo_mim

bench: install
	$(PY) bench/backbone.py
	$(PY) bench/det.py $$($(PY) -c "import torch; print('' if torch.cuda.is_available() else '--size 512')")
	$(PY) bench/compile.py

clean:
	rm -rf output .pytest_cache
