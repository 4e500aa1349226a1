/* In-process driver for the runtime's tests: plays the tool's part without
   ptrace. It dlopens libpulp.so (argv[1]), then reads commands on stdin,
   one a line, calls __ulp_entry and makes the returned writes itself
   (mprotect + memcpy, in the order given), and prints what it sees.

   The layout of the interface comes from ulp_abi through -D flags:
   OFF_* (field offsets), REQUEST_MAX, RESULT_MSG_MAX, MAX_WRITES, RING_SIZE.

   Commands:
     apply FILE [nw]   APPLY with the request bytes in FILE (nw: make no writes)
     revert HEX [nw]   REVERT of a 64-hex-digit patch id
     undo              UNDO
     raw OP FILE       any operation with the bytes of FILE
     call NAME         call int NAME(void) found with dlsym
     greet NAME        call greet(out, size, NAME) found with dlsym (libgreet)
     tcall NAME        call it in a new thread, then get_tcounter there
     prog              call prog_value() of this program
     bytes NAME        the 14 bytes before NAME and the 6 at it
     reg               the published registry
     ring              the message ring, one "ring: " line per line
     state             Interface::state
     mapped TEXT       is a file whose path contains TEXT mapped? */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct write {
  uint64_t addr;
  uint32_t len;
  uint32_t kind;
  uint8_t old[16];
  uint8_t new_[16];
};
_Static_assert(sizeof(struct write) == 48, "Write layout");

struct record {
  uint8_t patch_id[32];
  int64_t applied_at;
  uint64_t container_path;
  uint64_t target_path;
  uint64_t comments;
  uint64_t nunits;
  uint64_t flags;
};
_Static_assert(sizeof(struct record) == 80, "PatchRecord layout");

static char *iface;
static int (*entry)(void);

#define FIELD(type, off) (*(type *)(iface + (off)))

__attribute__((noipa)) int prog_value(void) { return 5; }

static int (*lookup(const char *name))(void)
{
  void *f = dlsym(RTLD_DEFAULT, name);
  if (!f) {
    printf("no function %s\n", name);
    exit(3);
  }
  return (int (*)(void))f;
}

static void poke(const struct write *w)
{
  uint8_t *at = (uint8_t *)(uintptr_t)w->addr;
  if (memcmp(at, w->old, w->len) != 0) {
    printf("MISMATCH at %#lx\n", (unsigned long)w->addr);
    return;
  }
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t start = w->addr & ~(uintptr_t)(page - 1);
  size_t span = w->addr + w->len - start;
  if (mprotect((void *)start, span, PROT_READ | PROT_WRITE | PROT_EXEC)) {
    perror("mprotect");
    exit(4);
  }
  memcpy(at, w->new_, w->len);
  mprotect((void *)start, span, PROT_READ | PROT_EXEC);
}

static void call_runtime(const char *what, uint32_t op, const void *req, size_t len, int nowrite)
{
  FIELD(uint32_t, OFF_REQ_OP) = op;
  FIELD(uint32_t, OFF_REQ_LEN) = (uint32_t)len;
  if (len)
    memcpy(iface + OFF_REQ, req, len);
  int rc = entry();
  int code = FIELD(int32_t, OFF_RES_CODE);
  uint32_t n = FIELD(uint32_t, OFF_RES_NWRITES);
  printf("%s rc=%d code=%d nwrites=%u msg=%s\n", what, rc, code, n, iface + OFF_RES_MSG);
  struct write *w = (struct write *)(iface + OFF_RES_WRITES);
  printf("%s writes:", what);
  for (uint32_t i = 0; i < n; i++)
    printf(" %c%u", w[i].kind < 7 ? "SEFHTCR"[w[i].kind] : '?', w[i].len);
  printf("\n");
  if (nowrite)
    return;
  /* In the order given: the runtime puts every stub before the entry jump
     that leads to it (and, switching several functions, the slots, the
     jumps to them, the flag, the jumps straight to the targets). */
  for (uint32_t i = 0; i < n; i++)
    poke(&w[i]);
}

static void *read_file(const char *path, size_t *len)
{
  FILE *f = fopen(path, "rb");
  if (!f) {
    printf("cannot open %s\n", path);
    exit(3);
  }
  static char buf[REQUEST_MAX + 16];
  *len = fread(buf, 1, sizeof buf, f);
  fclose(f);
  return buf;
}

static void *thread_main(void *arg)
{
  int (*f)(void) = (int (*)(void))arg;
  int v = f();
  int t = lookup("get_tcounter")();
  printf("thread=%d tls=%d\n", v, t);
  return NULL;
}

int main(int argc, char **argv)
{
  alarm(30);
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc < 2)
    return 2;
  void *rt = dlopen(argv[1], RTLD_NOW);
  if (!rt) {
    printf("dlopen runtime: %s\n", dlerror());
    return 2;
  }
  iface = dlsym(rt, "__ulp_interface");
  entry = (int (*)(void))dlsym(rt, "__ulp_entry");
  if (!iface || !entry) {
    printf("runtime symbols missing\n");
    return 2;
  }
  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = 0;
    char cmd[64] = "", arg[4000] = "", opt[4000] = "";
    if (sscanf(line, "%63s %3999s %3999s", cmd, arg, opt) < 1)
      continue;
    int nw = !strcmp(opt, "nw");
    if (!strcmp(cmd, "apply")) {
      size_t len;
      void *req = read_file(arg, &len);
      call_runtime("apply", 1, req, len, nw);
    } else if (!strcmp(cmd, "revert")) {
      uint8_t id[32];
      for (int i = 0; i < 32; i++)
        sscanf(arg + 2 * i, "%2hhx", &id[i]);
      call_runtime("revert", 2, id, 32, nw);
    } else if (!strcmp(cmd, "undo")) {
      call_runtime("undo", 3, NULL, 0, 0);
    } else if (!strcmp(cmd, "raw")) {
      size_t len;
      void *req = read_file(opt, &len);
      call_runtime("raw", (uint32_t)atoi(arg), req, len, 1);
    } else if (!strcmp(cmd, "call")) {
      printf("%s=%d\n", arg, lookup(arg)());
    } else if (!strcmp(cmd, "greet")) {
      int (*greet)(char *, int, const char *) =
          (int (*)(char *, int, const char *))lookup("greet");
      char out[256];
      greet(out, sizeof out, arg);
      printf("greet=%s\n", out);
    } else if (!strcmp(cmd, "tcall")) {
      pthread_t t;
      pthread_create(&t, NULL, thread_main, (void *)lookup(arg));
      pthread_join(t, NULL);
    } else if (!strcmp(cmd, "prog")) {
      printf("prog_value=%d\n", prog_value());
    } else if (!strcmp(cmd, "bytes")) {
      uint8_t *f = (uint8_t *)lookup(arg);
      printf("bytes %s:", arg);
      for (int i = -14; i < 6; i++)
        printf("%s%02x", i == 0 ? " | " : " ", f[i]);
      printf("\n");
    } else if (!strcmp(cmd, "reg")) {
      uint64_t gen = FIELD(uint64_t, OFF_REG_GENERATION);
      uint64_t count = FIELD(uint64_t, OFF_REG_COUNT);
      struct record *r = (struct record *)(uintptr_t)FIELD(uint64_t, OFF_REG_RECORDS);
      printf("reg gen=%llu count=%llu\n", (unsigned long long)gen, (unsigned long long)count);
      for (uint64_t i = 0; i < count; i++) {
        char comments[256];
        snprintf(comments, sizeof comments, "%s", (char *)(uintptr_t)r[i].comments);
        for (char *c = comments; *c; c++)
          if (*c == '\n')
            *c = '|';
        printf("rec id=%02x nunits=%llu at=%lld container=%s target=%s comments=%s\n",
               r[i].patch_id[0], (unsigned long long)r[i].nunits, (long long)r[i].applied_at,
               (char *)(uintptr_t)r[i].container_path, (char *)(uintptr_t)r[i].target_path,
               comments);
      }
    } else if (!strcmp(cmd, "ring")) {
      uint64_t head = FIELD(uint64_t, OFF_RING_HEAD);
      uint64_t n = head < RING_SIZE ? head : RING_SIZE;
      const char *ring = iface + OFF_RING;
      printf("ring: ");
      for (uint64_t i = head - n; i < head; i++) {
        char c = ring[i % RING_SIZE];
        putchar(c);
        if (c == '\n' && i + 1 < head)
          printf("ring: ");
      }
    } else if (!strcmp(cmd, "state")) {
      printf("state=%u\n", FIELD(uint32_t, OFF_STATE));
    } else if (!strcmp(cmd, "mapped")) {
      FILE *m = fopen("/proc/self/maps", "r");
      char l[4096];
      int found = 0;
      while (m && fgets(l, sizeof l, m))
        if (strstr(l, arg))
          found = 1;
      if (m)
        fclose(m);
      printf("mapped %s=%s\n", arg, found ? "yes" : "no");
    } else {
      printf("unknown command %s\n", cmd);
      return 2;
    }
  }
  printf("done\n");
  return 0;
}
