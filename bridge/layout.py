"""The register layout: where every point of a unit sits, as constants and two functions.

Everything is derived from the physical address, so the layout needs no table:

- a **link** takes ``UNITS_PER_LINK`` (4) consecutive unit ids from its first; a **CDT** has a
  *slot* 0..255 on its link (fixed once assigned, see :mod:`st2000r.bridge.regmap`): unit
  ``first_unit + slot // 64``, block base ``1000 × (1 + slot % 64)``;
- a **meter** (module m 1..32, channel c 1..3) sits at ``cdt base + 30 × (m − 1) + 10 × (c − 1)``;
  its registers are at offsets ``METER_POINTS`` from there (8 used, 2 spare), and its valve
  coil has the same address in the coil table;
- the **CDT's own points** are at ``cdt base + 960`` (offsets ``CDT_POINTS``);
- the **unit header** (map version and hash, the link's points, the historian's status) is
  at 0..99 of every unit.

Input registers (function 4) carry every value; coils (functions 1, 5, 15) the valves.  A
32-bit value takes two registers, most significant word first (``word_order`` "big"),
unsigned.  The spare registers read 0; addresses outside the header and the blocks of
configured CDTs get exception 02 (illegal data address).  Decimal bases keep addresses
readable: meter 3/2 of the CDT in slot 5 is at 6000 + 30 + 10 = 6040.
"""

from __future__ import annotations

from st2000r.config.modbus import UNITS_PER_LINK

__all__ = [
    "MAP_VERSION", "UNITS_PER_LINK", "CDTS_PER_UNIT", "SLOTS_PER_LINK", "CDT_BLOCK", "CDT_HEADER", "HEADER_SIZE",
    "METER_STRIDE", "MODULE_STRIDE", "METER_POINTS", "CDT_POINTS", "HEADER_POINTS", "QUALITY_CODES",
    "COMMAND_CODES", "LINK_STATE_CODES", "VALVE_UNKNOWN", "UNKNOWN16", "UNKNOWN32", "NO_VALUE", "SATURATED",
    "ALARM_COMM_FAIL", "HISTORIAN_STATE_CODES", "cdt_base", "meter_base", "unit_of_slot",
]

#: layout version, register 0 of every unit; changes only if this module's rules change.
#: 2: the historian's status at 30..39 of every unit header (every address of 1 unchanged)
MAP_VERSION = 2
CDTS_PER_UNIT = 64
SLOTS_PER_LINK = CDTS_PER_UNIT * UNITS_PER_LINK
CDT_BLOCK = 1000
CDT_HEADER = 960
HEADER_SIZE = 100
METER_STRIDE = 10
MODULE_STRIDE = 30

# point name -> (offset, register type, unit of measure or "", description, description_zh)
METER_POINTS: dict[str, tuple[int, str, str, str, str]] = {
    "value": (0, "uint32", "", "meter reading in its base unit", "表计读数（基本单位）"),
    "quality": (2, "uint16", "", "quality code (low byte) and flags (bit 8 no value yet, bit 9 saturated)",
                "数据质量代码（低字节）及标志"),
    "age": (3, "uint32", "s", "seconds since the reading was taken (4294967295: never read)", "读数时长（秒）"),
    "alarms": (5, "uint16", "", "alarm bits: 0 tamper, 1 short, 2 open, 3 comm-fail (0: none)",
               "报警位：0 磁干扰，1 短路，2 断线，3 通信故障"),
    "valve": (6, "uint16", "", "valve state: 0 open, 1 closed, 2 no valve, 3 fault, 65535 unknown",
              "阀门状态：0 开，1 关，2 无阀，3 故障"),
    "command_status": (7, "uint16", "", "last valve command: 0 none, 1 pending, 2 sent, 3 succeeded, 4 failed, "
                                        "5 timed out, 6 refused, 7 interrupted", "最近阀门命令状态"),
}
CDT_POINTS: dict[str, tuple[int, str, str, str, str]] = {
    "online": (0, "uint16", "", "CDT answers: 1 yes, 0 no, 65535 not polled yet", "采集终端在线"),
    "mains": (1, "uint16", "", "mains power: 1 on, 0 off (battery), 65535 unknown", "市电供电"),
    "battery_low": (2, "uint16", "", "battery low: 1 yes, 0 no, 65535 unknown", "电池欠压"),
    "battery_mv": (3, "uint16", "mV", "battery voltage (65535 unknown)", "电池电压"),
    "modules": (4, "uint32", "", "module inventory: bit n-1 set when module n answers", "功能模块清单"),
    "address": (6, "uint32", "", "the CDT's bus address", "采集终端地址"),
    "slot": (8, "uint16", "", "the CDT's slot on its link", "槽位"),
}
HEADER_POINTS: dict[str, tuple[int, str, str, str, str]] = {
    "map_version": (0, "uint16", "", "register layout version", "寄存器表版本"),
    "map_hash": (1, "uint64", "", "hash of the whole map (changes when any address changes)", "寄存器表哈希"),
    "unit_index": (5, "uint16", "", "which of the link's units this is (0..3: slots 64×index ..)", "单元序号"),
    "link_state": (10, "uint16", "", "link state: 0 connected, 1 disconnected, 2 stopped, 3 idle", "链路状态"),
    "link_signal": (11, "uint16", "", "GSM signal CSQ 0..31 (99 unknown; 65535 no radio)", "信号强度"),
    "link_transactions": (12, "uint32", "", "bus requests sent", "总线请求数"),
    "link_timeouts": (14, "uint32", "", "bus requests without a reply in time", "超时数"),
    "link_checksum_errors": (16, "uint32", "", "frames with a bad checksum or garbled", "校验错误数"),
    "link_rounds": (18, "uint32", "", "poll rounds completed since start", "完成轮询轮数"),
    "link_cdts_online": (20, "uint16", "", "CDTs of the link answering now", "在线终端数"),
    "link_cdts": (21, "uint16", "", "CDTs configured on the link", "终端总数"),
    "historian_state": (30, "uint16", "", "historian: 0 writing to its database, 1 starting, 2 database unreachable "
                                          "(spooling), 3 database schema not current (spooling), 65535 no historian or "
                                          "no status yet", "历史库状态"),
    "historian_spool_rows": (31, "uint32", "", "readings in the historian's spool, not yet in the database",
                             "待写入数据库的记录数"),
    "historian_oldest_age": (33, "uint32", "s", "seconds since the oldest reading still in the spool was spooled "
                                                "(0: none waiting)", "最早待写记录时长（秒）"),
    "historian_write_rate": (35, "uint32", "rows/s", "rows committed to the database per second, about the last "
                                                     "minute", "写入速率（行/秒）"),
    "historian_spool_used": (37, "uint16", "", "spool fill in per mille of its bound (an alarm is raised at 800)",
                             "缓存占用（千分比）"),
    "historian_quarantined": (38, "uint32", "", "rows set aside since the start (could not be written)",
                              "隔离记录数"),
}

#: Quality -> register code (``Quality.value`` spelling)
QUALITY_CODES: dict[str, int] = {"good": 0, "stale": 1, "comm_fail": 2, "estimated": 3, "substituted": 4}
NO_VALUE = 0x100  # quality flag: never read, value registers are 0
SATURATED = 0x200  # quality flag: the value exceeds 32 bits; the registers hold 4294967295
ALARM_COMM_FAIL = 0x8
COMMAND_CODES: dict[str, int] = {"pending": 1, "sent": 2, "succeeded": 3, "failed": 4, "timed_out": 5,
                                 "refused": 6, "interrupted": 7}
LINK_STATE_CODES: dict[str, int] = {"connected": 0, "disconnected": 1, "stopped": 2, "idle": 3}
#: ``HistorianChanged.state`` -> register code (65535: no historian, or no status yet)
HISTORIAN_STATE_CODES: dict[str, int] = {"connected": 0, "starting": 1, "unreachable": 2, "schema": 3}
VALVE_UNKNOWN = UNKNOWN16 = 0xFFFF
UNKNOWN32 = 0xFFFFFFFF


def unit_of_slot(first_unit: int, slot: int) -> int:
    return first_unit + slot // CDTS_PER_UNIT


def cdt_base(slot: int) -> int:
    """First register of the CDT block of ``slot`` in its unit."""
    return CDT_BLOCK * (1 + slot % CDTS_PER_UNIT)


def meter_base(slot: int, module: int, channel: int) -> int:
    """First register (and coil address) of a meter of the CDT in ``slot``."""
    return cdt_base(slot) + MODULE_STRIDE * (module - 1) + METER_STRIDE * (channel - 1)
