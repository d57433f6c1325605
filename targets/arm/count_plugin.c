/* QEMU TCG plugin: count executed aarch64 instructions by class, only between the marker
 * instructions `hint #0x70` (start) and `hint #0x71` (stop), so that the count covers
 * exactly the measured call and is the same from run to run.
 * Classes: sdot/udot, smmla/ummla/usmmla, other SIMD&FP, loads/stores, other (scalar).
 * QEMU's plugin header is not packaged by Debian: the few declarations needed from QEMU's
 * documented plugin API (version 1, QEMU 7.2) are written out below.
 * Build: gcc -shared -fPIC -O2 -o libcount.so count.c
 * Use:   qemu-aarch64 -plugin ./libcount.so -d plugin ./program    (prints one line of counts)
 *        -plugin ./libcount.so,profile=FILE  also writes, per translated block executed between
 *        the markers, "vaddr executions sdot smmla simd loadstore scalar" (instructions of the
 *        block by class, times executions) to FILE: a per-function profile once the addresses
 *        are matched to symbols. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- from QEMU's include/qemu/qemu-plugin.h (plugin API version 1) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;  /* only passed through */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                                 enum qemu_plugin_cb_flags flags, void *userdata);
extern void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                                   enum qemu_plugin_cb_flags flags, void *userdata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
extern size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
extern void qemu_plugin_outs(const char *string);
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;
/* ---- end of the declarations ---- */

enum { DOT, MMLA, SIMD, MEM, SCALAR, NCLASS };
static const char *names[NCLASS] = {"sdot", "smmla", "simd", "loadstore", "scalar"};
static const uint32_t START = 0xD5032E1F, STOP = 0xD5032E3F; /* hint #0x70, hint #0x71 */
static uint64_t counts[NCLASS];
static bool enabled;
static int markers_seen;

static int classify(uint32_t i) {
    if ((i & 0xBFE0FC00) == 0x0E809400 || (i & 0xBFE0FC00) == 0x2E809400) return DOT; /* sdot/udot (vector) */
    if ((i & 0xBFC0F400) == 0x0F80E000 || (i & 0xBFC0F400) == 0x2F80E000) return DOT; /* sdot/udot (element) */
    if ((i & 0xFFE0FC00) == 0x4E80A400 || (i & 0xFFE0FC00) == 0x6E80A400 || (i & 0xFFE0FC00) == 0x4E80AC00) return MMLA;
    if (((i >> 25) & 0x7) == 0x7) return SIMD;   /* data processing, SIMD & FP */
    if (((i >> 25) & 0x5) == 0x4) return MEM;    /* loads and stores */
    return SCALAR;
}

typedef struct TbCounts { uint64_t n[NCLASS]; uint64_t vaddr, executions; struct TbCounts *next; } TbCounts;
static TbCounts *blocks;  /* every translated block without a marker (for the profile) */
static const char *profile_path;

static void tb_exec(unsigned int vcpu, void *udata) {
    if (!enabled) return;
    TbCounts *c = udata;
    c->executions++;
    for (int k = 0; k < NCLASS; k++) counts[k] += c->n[k];
}

static void insn_exec(unsigned int vcpu, void *udata) {  /* only in blocks that hold a marker */
    uintptr_t v = (uintptr_t)udata;
    if (v == 0x100) { enabled = true; markers_seen++; return; }
    if (v == 0x101) { enabled = false; markers_seen++; return; }
    if (enabled) counts[v]++;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    bool has_marker = false;
    TbCounts c = {{0}};
    for (size_t k = 0; k < n; k++) {
        uint32_t i;
        memcpy(&i, qemu_plugin_insn_data(qemu_plugin_tb_get_insn(tb, k)), 4);
        if (i == START || i == STOP) has_marker = true;
        c.n[classify(i)]++;
    }
    if (!has_marker) {
        TbCounts *p = malloc(sizeof *p);  /* lives as long as the translation: never freed */
        *p = c;
        p->vaddr = qemu_plugin_tb_vaddr(tb);
        p->next = blocks;
        blocks = p;
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, p);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
        uint32_t i;
        memcpy(&i, qemu_plugin_insn_data(insn), 4);
        uintptr_t tag = i == START ? 0x100 : i == STOP ? 0x101 : (uintptr_t)classify(i);
        qemu_plugin_register_vcpu_insn_exec_cb(insn, insn_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)tag);
    }
}

static void at_exit(qemu_plugin_id_t id, void *udata) {
    char line[512];
    uint64_t total = 0;
    for (int k = 0; k < NCLASS; k++) total += counts[k];
    int len = snprintf(line, sizeof line, "qcompiler-count markers=%d total=%llu", markers_seen, (unsigned long long)total);
    for (int k = 0; k < NCLASS; k++)
        len += snprintf(line + len, sizeof line - len, " %s=%llu", names[k], (unsigned long long)counts[k]);
    snprintf(line + len, sizeof line - len, "\n");
    qemu_plugin_outs(line);
    if (profile_path) {
        FILE *f = fopen(profile_path, "w");
        if (!f) { qemu_plugin_outs("qcompiler-count: cannot write the profile file\n"); return; }
        for (TbCounts *p = blocks; p; p = p->next) {
            if (!p->executions) continue;
            fprintf(f, "%llx %llu", (unsigned long long)p->vaddr, (unsigned long long)p->executions);
            for (int k = 0; k < NCLASS; k++) fprintf(f, " %llu", (unsigned long long)(p->n[k] * p->executions));
            fprintf(f, "\n");
        }
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int k = 0; k < argc; k++)
        if (strncmp(argv[k], "profile=", 8) == 0) profile_path = argv[k] + 8;
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
