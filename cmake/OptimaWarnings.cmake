# Warning flags and sanitizers applied to optima's own targets (never to LibTorch's headers, which are SYSTEM).
function(optima_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow=local -Wnon-virtual-dtor -Wcast-align
                              -Wunused -Woverloaded-virtual -Wformat=2 -Wimplicit-fallthrough>)
  if(OPTIMA_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
  endif()
  if(OPTIMA_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${OPTIMA_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=${OPTIMA_SANITIZE})
  endif()
endfunction()
