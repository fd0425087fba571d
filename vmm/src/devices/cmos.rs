//! The CMOS real-time clock (ports 0x70/0x71), read-only: enough for a guest
//! to read the wall-clock time at boot. Without it Linux polls the missing
//! chip's update-in-progress flag before giving up, which costs seconds
//! where guest kernel code is emulated, and boots with the clock at 1970.

use std::time::{SystemTime, UNIX_EPOCH};

use super::BusDevice;

/// Index port; the data port follows it.
pub const PORT: u64 = 0x70;
/// Index + data.
pub const PORT_LEN: u64 = 2;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Status B: 24-hour mode, BCD values. x86 Linux decodes the clock as BCD
/// whatever this register says (`RTC_ALWAYS_BCD`), so binary values would
/// make a guest boot with a wrong date (2026 read as 2020).
const STATUS_B_24H_BCD: u8 = 1 << 1;
/// Status D: valid RAM and time.
const STATUS_D_VALID: u8 = 1 << 7;

/// A civil UTC date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year.
    pub year: u32,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    /// 0-23.
    pub hour: u32,
    /// 0-59.
    pub minute: u32,
    /// 0-59.
    pub second: u32,
    /// 1 (Sunday) - 7.
    pub weekday: u32,
}

/// Converts seconds since the Unix epoch to a UTC date (Howard Hinnant's
/// days-from-civil inverse).
pub fn datetime_from_unix(secs: u64) -> DateTime {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
    DateTime {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem / 60 % 60) as u32,
        second: (rem % 60) as u32,
        // 1970-01-01 was a Thursday (5 with Sunday = 1).
        weekday: ((days + 4).rem_euclid(7) + 1) as u32,
    }
}

/// The RTC.
#[derive(Debug, Default)]
pub struct CmosRtc {
    index: u8,
}

/// The clock's state, as a snapshot saves it: only the selected register.
/// The time itself is the host's, read on every access; the index matters
/// when a guest is paused between selecting a register and reading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosSnapshot {
    /// The register port 0x71 reads.
    pub index: u8,
}

impl CmosRtc {
    /// A clock reading the host's time.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock's state for a snapshot.
    pub fn snapshot(&self) -> CmosSnapshot {
        CmosSnapshot { index: self.index }
    }

    /// Takes the state a snapshot saved.
    pub fn restore(&mut self, saved: &CmosSnapshot) {
        self.index = saved.index & 0x7f;
    }

    fn register(&self, now: &DateTime) -> u8 {
        // Two BCD digits.
        let v = |x: u32| (((x / 10) % 10) << 4 | (x % 10)) as u8;
        match self.index {
            REG_SECONDS => v(now.second),
            REG_MINUTES => v(now.minute),
            REG_HOURS => v(now.hour),
            REG_WEEKDAY => v(now.weekday),
            REG_DAY => v(now.day),
            REG_MONTH => v(now.month),
            REG_YEAR => v(now.year % 100),
            REG_CENTURY => v(now.year / 100),
            REG_STATUS_A => 0x26, // 32.768 kHz time base, 1024 Hz rate, no update in progress
            REG_STATUS_B => STATUS_B_24H_BCD,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VALID,
            _ => 0,
        }
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = if offset == 1 {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.register(&datetime_from_unix(secs))
        } else {
            self.index
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Some(&index)) = (offset, data.first()) {
            // Bit 7 is the NMI mask, not part of the index.
            self.index = index & 0x7f;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_converts_to_civil_utc() {
        assert_eq!(
            datetime_from_unix(0),
            DateTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2026-11-25 20:46:43 UTC, a Wednesday.
        assert_eq!(
            datetime_from_unix(1_795_639_603),
            DateTime {
                year: 2026,
                month: 11,
                day: 25,
                hour: 20,
                minute: 46,
                second: 43,
                weekday: 4
            }
        );
        // Leap day.
        let d = datetime_from_unix(951_782_400);
        assert_eq!((d.year, d.month, d.day), (2000, 2, 29));
    }

    #[test]
    fn a_restored_clock_reads_the_register_selected_before_the_snapshot() {
        let mut rtc = CmosRtc::new();
        rtc.write(0, &[REG_STATUS_B]);
        let saved: CmosSnapshot =
            serde_json::from_str(&serde_json::to_string(&rtc.snapshot()).expect("ser"))
                .expect("de");
        let mut restored = CmosRtc::new();
        restored.restore(&saved);
        let mut b = [0u8];
        restored.read(1, &mut b);
        assert_eq!(b[0], STATUS_B_24H_BCD);
    }

    #[test]
    fn registers_are_bcd_24h_and_never_updating() {
        let mut rtc = CmosRtc::new();
        let read = |rtc: &mut CmosRtc, index: u8| {
            rtc.write(0, &[index | 0x80]);
            let mut b = [0u8];
            rtc.read(1, &mut b);
            b[0]
        };
        assert_eq!(read(&mut rtc, REG_STATUS_A) & 0x80, 0, "UIP clear");
        assert_eq!(read(&mut rtc, REG_STATUS_B), STATUS_B_24H_BCD);
        assert_eq!(read(&mut rtc, REG_CENTURY), 0x20);
        let bcd = |b: u8| u32::from(b >> 4) * 10 + u32::from(b & 0xf);
        let month = read(&mut rtc, REG_MONTH);
        assert!(
            month & 0xf < 10 && (1..=12).contains(&bcd(month)),
            "{month:#x}"
        );
        let second = read(&mut rtc, REG_SECONDS);
        assert!(second & 0xf < 10 && bcd(second) < 60, "{second:#x}");
        // The year the host's clock says, as the guest decodes it.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let year = bcd(read(&mut rtc, REG_CENTURY)) * 100 + bcd(read(&mut rtc, REG_YEAR));
        assert_eq!(year, datetime_from_unix(now).year);
    }
}
