// Sizes as people write them on command lines and in configs ("5GB", "500MB", "2GiB", "1048576").
#pragma once

#include <cstdint>
#include <string_view>

namespace optima {

// Bytes of `text`: decimal units as transformers uses them (KB, MB, GB, TB), binary ones with "i" (KiB, ...), or a
// plain number of bytes. A usage error says what was expected when `text` is not such a size or not positive.
uint64_t parse_byte_size(std::string_view text);

}  // namespace optima
