package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRecoverySmall runs the whole program in-process on a tiny
// configuration: every device's entry must be delivered after each cut and
// nothing lost. The figures themselves are not checked: they depend on the
// machine's load.
func TestRecoverySmall(t *testing.T) {
	cfg := defaultConfig()
	cfg.Devices = []int{50}
	cfg.RTTs = []time.Duration{10 * time.Millisecond}
	cfg.Window = 10
	cfg.Cuts = 2
	cfg.JSON = true
	cfg.Timeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, run(ctx, cfg, &out), out.String())

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 1)
	var r result
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &r), lines[0])
	require.Empty(t, r.Err)
	require.Equal(t, 50, r.Devices)
	require.Equal(t, 50, r.Delivered)
	require.Zero(t, r.Lost)
	require.Zero(t, r.Failed)
	require.Len(t, r.PerCut, 2)
	for _, c := range r.PerCut {
		require.Equal(t, 50, c.Acked)
		require.Equal(t, 50, c.Stored)
		require.EqualValues(t, 50, c.Announced, "every device announced again")
		require.Positive(t, c.AllMS)
		require.GreaterOrEqual(t, c.AllMS, c.FirstMS)
	}
	require.NotNil(t, r.FirstMS)
	require.NotNil(t, r.AllMS)

	// The text form of the same result.
	line := r.text()
	require.Contains(t, line, "devices=50 rtt=10ms window=10")
	require.Contains(t, line, "lost 0")
}

func TestParseFlags(t *testing.T) {
	var errOut bytes.Buffer
	cfg, err := parseFlags([]string{"-devices", "10, 20", "-rtt", "5ms,1s", "-window", "7", "-cuts", "3", "-json"}, &errOut)
	require.NoError(t, err)
	require.Equal(t, []int{10, 20}, cfg.Devices)
	require.Equal(t, []time.Duration{5 * time.Millisecond, time.Second}, cfg.RTTs)
	require.Equal(t, 7, cfg.Window)
	require.Equal(t, 3, cfg.Cuts)
	require.True(t, cfg.JSON)

	for _, bad := range [][]string{
		{"-devices", "0"}, {"-devices", "x"}, {"-rtt", "-1ms"}, {"-window", "0"}, {"-cuts", "0"}, {"extra"},
	} {
		_, err := parseFlags(bad, &errOut)
		require.Error(t, err, "%q", bad)
	}
}
