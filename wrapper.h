/* What bindgen reads: the glue/Rust boundary, against the Asterisk headers being built for. */
#include "asterisk.h"
#include "asterisk/cdr.h"
#include "cdr_kafka.h"
