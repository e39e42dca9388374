# gpsdrec: one binary, CPU reference backend always, CUDA backend when nvcc is present.
#
#   make              build ./gpsdrec (CUDA compiled in for sm_90 when nvcc is found)
#   make CUDA=0       force a CPU-only build
#   make test         build and run the CPU tests; also compiles every CUDA source
#   make test-gpu     build and run the GPU tests (needs a GPU)
#   make bench        kernel and end-to-end benchmarks (needs a GPU)
#   make clean

CC       ?= cc
CFLAGS   ?= -O3 -march=native -g
WARN     := -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-format-truncation -Wno-format-zero-length
BASEFLAGS := -std=c11 -D_GNU_SOURCE -fopenmp -Iinclude -Icsrc -Itests $(WARN)
LDLIBS   := -fopenmp -lm -lpthread
CUDA_ARCH ?= sm_90
NVCCFLAGS ?= -O3 -lineinfo
CUDA     ?= auto

BUILD := build
$(shell mkdir -p $(BUILD))
# Locating nvcc, cuDNN and NCCL is machine-specific; tools/cuda_paths.sh knows the places.
$(shell sh tools/cuda_paths.sh > $(BUILD)/cuda.mk.new && (cmp -s $(BUILD)/cuda.mk.new $(BUILD)/cuda.mk || mv $(BUILD)/cuda.mk.new $(BUILD)/cuda.mk); rm -f $(BUILD)/cuda.mk.new)
include $(BUILD)/cuda.mk

ifeq ($(CUDA),0)
  WITH_CUDA := 0
else ifeq ($(HAVE_NVCC),1)
  WITH_CUDA := 1
else ifeq ($(CUDA),1)
  $(error CUDA=1 but nvcc was not found)
else
  WITH_CUDA := 0
endif

HOST_SRC    := $(filter-out csrc/main.c,$(wildcard csrc/*.c csrc/cpu/*.c))
CUDAHOST_SRC:= $(wildcard csrc/cuda/*.c)
KERNEL_SRC  := $(wildcard kernels/*.cu)
TEST_SRC    := $(wildcard tests/test_*.c tests/support/*.c)
GPUTEST_SRC := $(wildcard tests/gpu/*.c tests/support/*.c)

ifeq ($(WITH_CUDA),1)
  FLAVOR   := cuda
  CUDA_INC := -I$(CUDA_HOME)/include $(if $(CUDNN_INC),-I$(CUDNN_INC)) $(if $(NCCL_INC),-I$(NCCL_INC))
  DEFS     := -DGPSDREC_WITH_CUDA=1 -Ikernels $(CUDA_INC)
  CUDA_LIBDIRS := $(sort $(CUDA_HOME)/lib64 $(CUDNN_LIBDIR) $(NCCL_LIBDIR))
  CUDA_LIBS := $(foreach d,$(CUDA_LIBDIRS),-L$(d) -Wl,-rpath,$(d)) -lcudart -lcublasLt -lcublas $(CUDNN_LINK) $(NCCL_LINK) -lstdc++
  OBJ_EXTRA := $(CUDAHOST_SRC:%.c=$(BUILD)/cuda/%.o) $(KERNEL_SRC:%.cu=$(BUILD)/cuda/%.o)
else
  FLAVOR   := cpu
  DEFS     :=
  CUDA_LIBS :=
  OBJ_EXTRA :=
endif

OBJDIR   := $(BUILD)/$(FLAVOR)
LIB_OBJ  := $(HOST_SRC:%.c=$(OBJDIR)/%.o) $(OBJ_EXTRA)
MAIN_OBJ := $(OBJDIR)/csrc/main.o
TEST_OBJ := $(TEST_SRC:%.c=$(OBJDIR)/%.o) $(OBJDIR)/tests/test_main.o
GPUTEST_OBJ := $(GPUTEST_SRC:%.c=$(OBJDIR)/%.o) $(OBJDIR)/tests/test_main.o
DEPS     := $(OBJDIR)/benchmarks/bench_step.d $(OBJDIR)/tools/parity_dump.d $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(GPUTEST_OBJ:.o=.d)

.PHONY: all test test-gpu bench clean kernels flavor
all: gpsdrec flavor

flavor:
ifeq ($(WITH_CUDA),1)
	@echo "gpsdrec: built with the CUDA backend ($(CUDA_ARCH), $(CUDA_HOME))"
else
	@echo "gpsdrec: CPU-only build ($(if $(filter 1,$(HAVE_NVCC)),CUDA=0 given,nvcc not found)): device = cuda is unavailable"
endif

gpsdrec: $(MAIN_OBJ) $(LIB_OBJ)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)

$(OBJDIR)/%.o: %.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASEFLAGS) $(DEFS) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/cuda/kernels/%.o: kernels/%.cu Makefile
	@mkdir -p $(dir $@)
	$(NVCC) -std=c++17 -arch=$(CUDA_ARCH) $(NVCCFLAGS) -Iinclude -Ikernels $(CUDA_INC) -MMD -MP -c $< -o $@

# Every CUDA source (kernels, CUDA host code, GPU tests) compiles in `make test` when nvcc
# exists, even in a CUDA=0 build, so a kernel that does not compile fails CI.
kernels: $(if $(filter 1,$(HAVE_NVCC)),$(KERNEL_SRC:%.cu=$(BUILD)/cuda/%.o) $(CUDAHOST_SRC:%.c=$(BUILD)/cuda/%.o) $(filter $(BUILD)/cuda/tests/gpu/%,$(GPUTEST_SRC:%.c=$(BUILD)/cuda/%.o)))

CUDA_CFLAGS = $(BASEFLAGS) -DGPSDREC_WITH_CUDA=1 -I$(CUDA_HOME)/include -Ikernels $(if $(CUDNN_INC),-I$(CUDNN_INC)) $(if $(NCCL_INC),-I$(NCCL_INC)) $(CFLAGS)
$(BUILD)/cuda/csrc/%.o: csrc/%.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CUDA_CFLAGS) -MMD -MP -c $< -o $@
$(BUILD)/cuda/tests/%.o: tests/%.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CUDA_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/test_$(FLAVOR): $(TEST_OBJ) $(LIB_OBJ)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)

$(BUILD)/bench_step: $(OBJDIR)/benchmarks/bench_step.o $(LIB_OBJ)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)

# tools/parity_dump: one trainer micro-batch in the golden format, for tools/parity.py.
$(BUILD)/parity_dump: $(OBJDIR)/tools/parity_dump.o $(LIB_OBJ)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)

$(BUILD)/test_gpu: $(GPUTEST_OBJ) $(LIB_OBJ)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)

test: gpsdrec kernels $(BUILD)/test_$(FLAVOR)
	./$(BUILD)/test_$(FLAVOR) $(T)

test-gpu: gpsdrec $(BUILD)/test_gpu
ifneq ($(WITH_CUDA),1)
	$(error make test-gpu needs a CUDA build (nvcc not found or CUDA=0))
endif
	./$(BUILD)/test_gpu $(T)

bench: gpsdrec $(BUILD)/bench_step
	sh benchmarks/run_bench.sh

clean:
	rm -rf $(BUILD) gpsdrec

# Benchmarks (make bench; benchmarks/README.md): helpers shared by the benchmark binaries are
# extra prerequisites of bench_step (its recipe links $^), and bench_kernels exists in CUDA builds.
BENCH_OBJ := $(OBJDIR)/benchmarks/bench_ceiling.o $(OBJDIR)/benchmarks/step_flops.o
$(BUILD)/bench_step: $(BENCH_OBJ)
DEPS += $(BENCH_OBJ:.o=.d)
ifeq ($(WITH_CUDA),1)
BENCH_KERNELS_OBJ := $(addprefix $(OBJDIR)/benchmarks/,bench_kernels.o bench_harness.o bench_kernels_rows.o bench_kernels_gather.o bench_kernels_attn.o bench_kernels_misc.o bench_kernels_gemm.o) $(OBJDIR)/benchmarks/bench_ceiling.o
$(BUILD)/bench_kernels: $(BENCH_KERNELS_OBJ) $(LIB_OBJ)
	$(CC) $(BASEFLAGS) $(CFLAGS) -o $@ $^ $(CUDA_LIBS) $(LDLIBS)
bench: $(BUILD)/bench_kernels
DEPS += $(BENCH_KERNELS_OBJ:.o=.d)
endif

-include $(DEPS)
