# qforge: the two commands of the README.
#   make demo   set up, build, and run the main job on the default model
#   make test   set up, build, and run the tests
PRESET ?= release
BUILD  := build/$(PRESET)
QFORGE := $(BUILD)/qforge
CACHE  := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/qforge
MODEL  := $(CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
DATA   ?= ../shared/data
OUT    ?= out

.PHONY: setup build test demo bench clean

setup:
	bash scripts/setup.sh

build: setup
	cmake --preset $(PRESET) >/dev/null
	cmake --build --preset $(PRESET)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j2

demo: build
	$(QFORGE) convert $(MODEL) --out $(OUT)/smollm2-135m-fp32 --dtype f32
	$(QFORGE) eval --model $(OUT)/smollm2-135m-fp32 --data $(DATA)/wikitext-2-raw-test.txt --ctx 2048 --max-windows 4
	$(QFORGE) generate --model $(OUT)/smollm2-135m-fp32 --prompt "The capital of France is" --max-tokens 32

bench: build
	$(BUILD)/engine_bench --model $(MODEL)

clean:
	rm -rf build $(OUT)
