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

# The tests, then the unit tests again in an AddressSanitizer + UBSan build (the script-driven tests, which
# run the qforge binary on the default model, are left to the optimised build: they would take too long), then
# every libFuzzer target for 10 s on its committed corpus (clang build; docs/fuzzing.md).
test: build
	ctest --test-dir $(BUILD) --output-on-failure -j2
	cmake --preset asan >/dev/null
	cmake --build --preset asan --target qforge_tests qforge
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir build/asan --output-on-failure -j2 -E '^(PackedCompat|Determinism|Resume|cuda)'
	FUZZ_SECONDS=10 bash fuzz/ci_fuzz.sh

# The main job: FP reference, then RTN / GPTQ / AWQ / AWQ+GPTQ at 4 bits (group 64) calibrated on the
# Brown corpus, scored on WikiText-2 against FP. A small budget so it ends in minutes on 2 cores; see
# docs/quantization.md for the full table and its command.
demo: build
	$(QFORGE) convert $(MODEL) --out $(OUT)/smollm2-135m-fp32 --dtype f32
	$(QFORGE) compare --model $(OUT)/smollm2-135m-fp32 --calib $(DATA)/brown-corpus.txt \
	  --data $(DATA)/wikitext-2-raw-test.txt --ctx 2048 --max-windows 4 --bits 4 --group-size 64 \
	  --methods rtn,gptq,awq,awq-gptq --calib-samples 16 --calib-seqlen 512 --awq-search-samples 4 \
	  --json $(OUT)/compare.json
	$(QFORGE) quantize --model $(OUT)/smollm2-135m-fp32 --method awq --bits 4 --group-size 64 \
	  --calib $(DATA)/brown-corpus.txt --calib-samples 16 --calib-seqlen 512 --awq-search-samples 4 \
	  --format awq --out $(OUT)/smollm2-135m-awq4
	$(QFORGE) generate --model $(OUT)/smollm2-135m-awq4 --prompt "The capital of France is" --max-tokens 32

bench: build
	$(BUILD)/engine_bench --model $(MODEL)
	$(BUILD)/w4a16_bench
	$(BUILD)/w4_decode_bench --model $(MODEL)

clean:
	rm -rf build $(OUT)
