/* Live patch 1 for target.c: three functions, a static-variable reference
   and a TLS reference (as libpulp's interop example does). */
extern void *__tls_get_addr(void *);

int *ulpr_counter;
void *ulpr_tcounter[2];

int new_answer(void) { return 42; }

int new_bump(void)
{
  int *tc = __tls_get_addr(ulpr_tcounter);
  *ulpr_counter += 10;
  *tc += 10;
  return *ulpr_counter;
}

int new_secret(void) { return 100; }
