//! The GPIO button (captures a support shot) and the status LED (on while a target is seen),
//! written against the `embedded-hal` 1.0 digital traits so they run on any HAL; on Linux
//! boards the pins come from the GPIO character device ([`open_linux_pins`], `gpio` feature,
//! `linux-embedded-hal`'s `CdevPin`), the chip found by its label.

use embedded_hal::digital::{InputPin, OutputPin};

/// A button press becomes one event only after the raw level has been stable for the debounce
/// time (contact bounce on a cheap switch lasts a few ms).
#[derive(Debug, Clone)]
pub struct Debouncer {
    debounce_ms: u64,
    stable: bool,
    candidate: bool,
    candidate_since: u64,
}

impl Debouncer {
    pub fn new(debounce_ms: u64) -> Debouncer {
        Debouncer {
            debounce_ms,
            stable: false,
            candidate: false,
            candidate_since: 0,
        }
    }

    /// Feeds the raw "pressed" level at time `now_ms`; true once per debounced press.
    pub fn update(&mut self, pressed: bool, now_ms: u64) -> bool {
        if pressed != self.candidate {
            self.candidate = pressed;
            self.candidate_since = now_ms;
        }
        if self.candidate != self.stable
            && now_ms.saturating_sub(self.candidate_since) >= self.debounce_ms
        {
            self.stable = self.candidate;
            return self.stable;
        }
        false
    }

    pub fn is_pressed(&self) -> bool {
        self.stable
    }
}

/// A push button on an input pin. `active_low`: pressed pulls the line low (a button to ground
/// with the pin's pull-up, the usual wiring on a Raspberry Pi).
pub struct Button<P> {
    pin: P,
    active_low: bool,
    debouncer: Debouncer,
}

impl<P: InputPin> Button<P> {
    pub fn new(pin: P, active_low: bool, debounce_ms: u64) -> Self {
        Button {
            pin,
            active_low,
            debouncer: Debouncer::new(debounce_ms),
        }
    }

    /// Reads the pin; true once per debounced press.
    pub fn poll(&mut self, now_ms: u64) -> Result<bool, P::Error> {
        let high = self.pin.is_high()?;
        Ok(self.debouncer.update(high != self.active_low, now_ms))
    }

    pub fn into_pin(self) -> P {
        self.pin
    }
}

/// The status LED: writes the pin only when the wanted state changes.
pub struct StatusLed<P> {
    pin: P,
    active_low: bool,
    lit: Option<bool>,
}

impl<P: OutputPin> StatusLed<P> {
    pub fn new(pin: P, active_low: bool) -> Self {
        StatusLed {
            pin,
            active_low,
            lit: None,
        }
    }

    pub fn set(&mut self, on: bool) -> Result<(), P::Error> {
        if self.lit == Some(on) {
            return Ok(());
        }
        if on != self.active_low {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        self.lit = Some(on);
        Ok(())
    }

    pub fn into_pin(self) -> P {
        self.pin
    }
}

/// Linux GPIO character devices: find a chip by label, request lines.
#[cfg(feature = "gpio")]
pub mod linux {
    use linux_embedded_hal::gpio_cdev::{chips, Chip, LineRequestFlags};
    use linux_embedded_hal::CdevPin;

    /// `(path, label, lines)` of every GPIO chip.
    pub fn list_chips() -> Vec<(String, String, u32)> {
        let Ok(it) = chips() else { return Vec::new() };
        it.filter_map(|c| c.ok())
            .map(|c| {
                (
                    c.path().display().to_string(),
                    c.label().to_string(),
                    c.num_lines(),
                )
            })
            .collect()
    }

    /// The chip whose label is `label` (e.g. `pinctrl-bcm2711` on a Pi 4, `pinctrl-rp1` on a
    /// Pi 5, `tegra234-gpio` on Jetson Orin), or at path `label` when it starts with `/dev/`.
    pub fn find_chip(label: &str) -> Result<Chip, String> {
        if label.starts_with("/dev/") {
            return Chip::new(label).map_err(|e| format!("GPIO chip {label}: {e}"));
        }
        let it = chips().map_err(|e| format!("cannot list GPIO chips: {e}"))?;
        let mut seen = Vec::new();
        for c in it.filter_map(|c| c.ok()) {
            if c.label() == label {
                return Ok(c);
            }
            seen.push(format!("{} ({})", c.label(), c.path().display()));
        }
        Err(format!(
            "no GPIO chip labelled '{label}' (found: {})",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ))
    }

    fn request(
        chip: &mut Chip,
        line: u32,
        flags: LineRequestFlags,
        what: &str,
    ) -> Result<CdevPin, String> {
        let handle = chip
            .get_line(line)
            .and_then(|l| l.request(flags, 0, "fss-edge"))
            .map_err(|e| format!("GPIO {} line {line} ({what}): {e}", chip.label()))?;
        CdevPin::new(handle).map_err(|e| format!("GPIO {} line {line} ({what}): {e}", chip.label()))
    }

    /// The button (input) and LED (output) lines asked for, on the chip labelled `label`.
    pub fn open_pins(
        label: &str,
        button_line: Option<u32>,
        led_line: Option<u32>,
    ) -> Result<(Option<CdevPin>, Option<CdevPin>), String> {
        let mut chip = find_chip(label)?;
        let button = button_line
            .map(|l| request(&mut chip, l, LineRequestFlags::INPUT, "button"))
            .transpose()?;
        let led = led_line
            .map(|l| request(&mut chip, l, LineRequestFlags::OUTPUT, "LED"))
            .transpose()?;
        Ok((button, led))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock as PinMock, State, Transaction};

    #[test]
    fn debouncer_ignores_bounce_and_fires_once_per_press() {
        let mut d = Debouncer::new(20);
        // Bouncing contact: toggles every 2 ms for 10 ms, then held.
        let mut fired = 0;
        for t in (0..10).step_by(2) {
            fired += d.update(t % 4 == 0, t) as u32;
        }
        for t in 10..60 {
            fired += d.update(true, t) as u32;
        }
        assert_eq!(fired, 1);
        assert!(d.is_pressed());
        // Release (bouncy too), then a second press.
        for t in 60..100 {
            fired += d.update(t < 64 && t % 2 == 0, t) as u32;
        }
        assert!(!d.is_pressed());
        for t in 100..130 {
            fired += d.update(true, t) as u32;
        }
        assert_eq!(fired, 2);
    }

    #[test]
    fn active_low_button_reads_through_embedded_hal() {
        // Pull-up idle high, pressed low for 3 polls 10 ms apart.
        let levels = [State::High, State::Low, State::Low, State::Low, State::High];
        let expectations: Vec<Transaction> = levels.iter().map(|s| Transaction::get(*s)).collect();
        let pin = PinMock::new(&expectations);
        let mut b = Button::new(pin, true, 15);
        let presses: Vec<bool> = (0..5).map(|i| b.poll(i * 10).unwrap()).collect();
        assert_eq!(presses, vec![false, false, false, true, false]);
        b.into_pin().done();
    }

    #[test]
    fn led_writes_only_on_change() {
        let expectations = [
            Transaction::set(State::High),
            Transaction::set(State::Low),
            Transaction::set(State::High),
        ];
        let pin = PinMock::new(&expectations);
        let mut led = StatusLed::new(pin, false);
        for on in [true, true, false, false, false, true] {
            led.set(on).unwrap();
        }
        led.into_pin().done();
        // Active-low wiring inverts the level.
        let pin = PinMock::new(&[Transaction::set(State::Low)]);
        let mut led = StatusLed::new(pin, true);
        led.set(true).unwrap();
        led.into_pin().done();
    }
}
