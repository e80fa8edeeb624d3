package loadgen

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat;
// it is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ProcSample is what the kernel says of a process at one moment.
type ProcSample struct {
	CPU    time.Duration // user + system time so far
	HWMKiB int64         // peak resident set size so far (VmHWM)
	RSSKiB int64         // resident set size now (VmRSS)
}

// ReadProc samples process pid from /proc.
func ReadProc(pid int) (ProcSample, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcSample{}, fmt.Errorf("loadgen: %w", err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcSample{}, fmt.Errorf("loadgen: %w", err)
	}
	var s ProcSample
	if s.CPU, err = parseStat(string(stat)); err != nil {
		return ProcSample{}, err
	}
	if s.HWMKiB, s.RSSKiB, err = parseStatus(string(status)); err != nil {
		return ProcSample{}, err
	}
	return s, nil
}

// parseStat reads utime + stime (fields 14 and 15) from /proc/PID/stat.
// The command name, field 2, may hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseStat(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("loadgen: /proc/PID/stat: no command name")
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0, errors.New("loadgen: /proc/PID/stat: too few fields")
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("loadgen: /proc/PID/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// parseStatus reads VmHWM and VmRSS, in KiB, from /proc/PID/status.
func parseStatus(status string) (hwm, rss int64, err error) {
	found := 0
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmHWM" && key != "VmRSS") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("loadgen: /proc/PID/status %s: %w", key, err)
		}
		if key == "VmHWM" {
			hwm = n
		} else {
			rss = n
		}
		found++
	}
	if found != 2 {
		return 0, 0, errors.New("loadgen: /proc/PID/status: no VmHWM or VmRSS (a kernel thread, or a zombie?)")
	}
	return hwm, rss, nil
}
