//! The memory routines the compiler calls (`memcpy`, `memmove`, `memset`,
//! `memcmp`/`bcmp`, `strlen` for `CStr`), the runtime's own and hidden:
//! imported from the C library, each would be one more symbol the loader
//! looks up in every process that preloads the runtime, before `main`
//! (some 700 instructions each), and one more symbol version to check.
//! None of the runtime's copies is large or on anyone's hot path: plain
//! `rep movsb`/`rep stosb` and byte loops serve. Written in assembly, so
//! that the compiler cannot turn a loop of them back into a call of
//! themselves. The direction flag is never set (a backward copy is a
//! loop).

core::arch::global_asm!(
    // With the start code (`start` in lib.rs): the constructor's calls.
    ".pushsection .text.startup.ulp_mem,\"ax\",@progbits",
    // void *memcpy(void *dst, const void *src, size_t n)
    ".globl memcpy",
    ".hidden memcpy",
    ".type memcpy,@function",
    "memcpy:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "rep movsb",
    "ret",
    ".size memcpy, .-memcpy",
    // void *memmove(void *dst, const void *src, size_t n): forward when
    // dst is below src or past its end, else backward, byte by byte.
    ".globl memmove",
    ".hidden memmove",
    ".type memmove,@function",
    "memmove:",
    "mov rax, rdi",
    "mov rcx, rdx",
    "cmp rdi, rsi",
    "jbe 2f",
    "lea r8, [rsi + rdx]",
    "cmp rdi, r8",
    "jae 2f",
    "3:",
    "test rdx, rdx",
    "jz 4f",
    "dec rdx",
    "movzx ecx, byte ptr [rsi + rdx]",
    "mov byte ptr [rdi + rdx], cl",
    "jmp 3b",
    "2:",
    "rep movsb",
    "4:",
    "ret",
    ".size memmove, .-memmove",
    // void *memset(void *dst, int c, size_t n)
    ".globl memset",
    ".hidden memset",
    ".type memset,@function",
    "memset:",
    "mov r8, rdi",
    "mov eax, esi",
    "mov rcx, rdx",
    "rep stosb",
    "mov rax, r8",
    "ret",
    ".size memset, .-memset",
    // int memcmp(const void *a, const void *b, size_t n), also bcmp: the
    // difference of the first bytes that differ, as unsigned chars.
    ".globl memcmp",
    ".hidden memcmp",
    ".type memcmp,@function",
    ".globl bcmp",
    ".hidden bcmp",
    ".type bcmp,@function",
    "memcmp:",
    "bcmp:",
    "xor eax, eax",
    "5:",
    "test rdx, rdx",
    "jz 6f",
    "movzx eax, byte ptr [rdi]",
    "movzx ecx, byte ptr [rsi]",
    "sub eax, ecx",
    "jnz 6f",
    "inc rdi",
    "inc rsi",
    "dec rdx",
    "jmp 5b",
    "6:",
    "ret",
    ".size memcmp, .-memcmp",
    ".size bcmp, .-bcmp",
    // size_t strlen(const char *s)
    ".globl strlen",
    ".hidden strlen",
    ".type strlen,@function",
    "strlen:",
    "mov rax, rdi",
    "7:",
    "cmp byte ptr [rax], 0",
    "je 8f",
    "inc rax",
    "jmp 7b",
    "8:",
    "sub rax, rdi",
    "ret",
    ".size strlen, .-strlen",
    ".popsection",
);
