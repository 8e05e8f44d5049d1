#!/bin/sh
# Build the example sketch (firmware/examples/arduino) for an AVR board with avr-gcc and the
# Arduino AVR core, as the Arduino IDE / arduino-cli would (the same flags as the core's
# platform.txt: -Os, LTO, --gc-sections), and print its flash and RAM use (avr-size).
#
#   firmware/avr_build.sh [uno|mega] [BUILD_DIR] [SIM_PLANT]     # or: make -C firmware avr
#
# uno: ATmega328P (32 KiB flash, 2 KiB RAM); mega: ATmega2560 (256 KiB flash, 8 KiB RAM).
# SIM_PLANT: 1 (default) the board simulates CartPole-P, 0 the cart-pole rig.
# Our sources (the library, the loop, the plant, the sketch) build with -Wall -Wextra -Werror;
# the Arduino core with its own default flags (-w: it does not build warning-free).
# Needs avr-gcc, avr-g++, avr-gcc-ar, avr-objcopy, avr-size (Debian: gcc-avr binutils-avr
# avr-libc) and the core sources (Debian: arduino-core-avr, or ARDUINO_CORE=... pointing at
# an arduino:avr core, e.g. ~/.arduino15/packages/arduino/hardware/avr/1.8.6).
# Writes BUILD_DIR/rtu_edge_mcu.{elf,hex}, size.txt (avr-size -A) and size-mcu.txt (-C); the
# last line printed is
#   avr-size: BOARD MCU flash N bytes (P% of F), ram N bytes (P% of R) [data D, bss B]
set -eu

BOARD=${1:-uno}
FW=$(cd "$(dirname "$0")" && pwd)
OUT=${2:-$FW/build/avr-$BOARD}
SIM_PLANT=${3:-1}
CORE_ROOT=${ARDUINO_CORE:-/usr/share/arduino/hardware/arduino/avr}
case $BOARD in
uno) MCU=atmega328p VARIANT=standard DEF=ARDUINO_AVR_UNO FLASH=32256 RAM=2048 ;;
mega) MCU=atmega2560 VARIANT=mega DEF=ARDUINO_AVR_MEGA2560 FLASH=253952 RAM=8192 ;;
*) echo "board must be uno or mega, not $BOARD" >&2; exit 2 ;;
esac
# FLASH: what the board's bootloader leaves (boards.txt upload.maximum_size)
for t in avr-gcc avr-g++ avr-gcc-ar avr-objcopy avr-size; do
    command -v $t >/dev/null || { echo "$t not found (apt-get install gcc-avr binutils-avr avr-libc)" >&2; exit 3; }
done
[ -f "$CORE_ROOT/cores/arduino/Arduino.h" ] || {
    echo "Arduino AVR core not found at $CORE_ROOT (apt-get install arduino-core-avr, or set ARDUINO_CORE)" >&2
    exit 3
}
CORE=$CORE_ROOT/cores/arduino

rm -rf "$OUT"
mkdir -p "$OUT/core" "$OUT/sketch"
make -s -C "$FW" BUILD="$OUT" arduino-sketch >/dev/null
SKETCH=$OUT/rtu_edge_mcu

ARCH="-mmcu=$MCU -DF_CPU=16000000L -DARDUINO=10807 -D$DEF -DARDUINO_ARCH_AVR"
INC="-I$CORE -I$CORE_ROOT/variants/$VARIANT"
COMMON="-g -Os -ffunction-sections -fdata-sections -flto -fno-fat-lto-objects $ARCH"
CFLAGS_CORE="-w -std=gnu11 $COMMON"
# DECIMAL_DIG: WString.cpp of core 1.8.x takes it from <float.h>, whose avr-gcc 5 copy (Debian
# 12's gcc-avr) defines it for C99 only, not for C++; gcc >= 6 (Arduino's own 7.3) does, with
# this value
CXXFLAGS_CORE="-w -std=gnu++11 -fpermissive -fno-exceptions -fno-threadsafe-statics $COMMON"
CXXFLAGS_CORE="$CXXFLAGS_CORE -DDECIMAL_DIG=__DECIMAL_DIG__"
OURS="-Wall -Wextra -Werror"

# the Arduino core, as core.a
for f in "$CORE"/*.c; do avr-gcc -c $CFLAGS_CORE $INC "$f" -o "$OUT/core/$(basename "$f").o"; done
for f in "$CORE"/*.cpp; do avr-g++ -c $CXXFLAGS_CORE $INC "$f" -o "$OUT/core/$(basename "$f").o"; done
for f in "$CORE"/*.S; do avr-gcc -c -g -x assembler-with-cpp -flto $ARCH $INC "$f" -o "$OUT/core/$(basename "$f").o"; done
avr-gcc-ar rcs "$OUT/core.a" "$OUT"/core/*.o

# ours: the library, the loop and the plant as C99, the sketch as C++11
for f in rtu_edge_proto mcu_loop cartpole; do
    avr-gcc -c -std=c99 -pedantic $OURS $COMMON $INC -I"$SKETCH/src" "$SKETCH/src/$f.c" -o "$OUT/sketch/$f.o"
done
avr-g++ -c $OURS -std=gnu++11 -fno-exceptions -fno-threadsafe-statics $COMMON $INC \
    -DRTU_EDGE_SIM_PLANT="$SIM_PLANT" -x c++ "$SKETCH/rtu_edge_mcu.ino" -o "$OUT/sketch/rtu_edge_mcu.o"

avr-gcc -w -Os -g -flto -fuse-linker-plugin -Wl,--gc-sections -mmcu=$MCU \
    "$OUT"/sketch/*.o "$OUT/core.a" -lm -o "$OUT/rtu_edge_mcu.elf"
avr-objcopy -O ihex -R .eeprom "$OUT/rtu_edge_mcu.elf" "$OUT/rtu_edge_mcu.hex"

avr-size -A "$OUT/rtu_edge_mcu.elf" >"$OUT/size.txt"
avr-size -C --mcu="$MCU" "$OUT/rtu_edge_mcu.elf" >"$OUT/size-mcu.txt" 2>/dev/null || true
sec() { awk -v s="$1" '$1 == s { print $2 }' "$OUT/size.txt"; }
TEXT=$(sec .text) DATA=$(sec .data) BSS=$(sec .bss)
DATA=${DATA:-0} BSS=${BSS:-0}
FLASH_USED=$((TEXT + DATA))
RAM_USED=$((DATA + BSS))
grep -E '^\.(text|data|bss) ' "$OUT/size.txt"
echo "avr-size: $BOARD $MCU flash $FLASH_USED bytes ($((100 * FLASH_USED / FLASH))% of $FLASH), ram $RAM_USED bytes ($((100 * RAM_USED / RAM))% of $RAM) [data $DATA, bss $BSS]"
