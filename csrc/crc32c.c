/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), software slicing-by-8.
 *
 * Portable on purpose: the checksum defines the file format, so it must not depend on which
 * instructions the build machine has. Slicing-by-8 consumes 8 bytes per step with eight
 * 256-entry tables; the tables are built once (pthread_once, so concurrent first calls from
 * OpenMP threads are safe) and never change afterwards.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "dataset.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "slicing-by-8 below reads words little-endian");

#define CRC32C_POLY_REFLECTED 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_table_once = PTHREAD_ONCE_INIT;

static void crc_table_build(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? (c >> 1) ^ CRC32C_POLY_REFLECTED : c >> 1;
        crc_table[0][n] = c;
    }
    /* crc_table[k][n]: the CRC contribution of byte n followed by k zero bytes. */
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xffu] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

uint32_t gp_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_table_once, crc_table_build);
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (len && ((uintptr_t)p & 7u)) {
        c = crc_table[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = crc_table[7][w & 0xffu] ^ crc_table[6][(w >> 8) & 0xffu] ^ crc_table[5][(w >> 16) & 0xffu] ^
            crc_table[4][(w >> 24) & 0xffu] ^ crc_table[3][(w >> 32) & 0xffu] ^ crc_table[2][(w >> 40) & 0xffu] ^
            crc_table[1][(w >> 48) & 0xffu] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = crc_table[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
    return ~c;
}
