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

// TestBenchSmall runs the whole program in-process on a tiny load against
// the embedded broker.
func TestBenchSmall(t *testing.T) {
	cfg := defaultConfig()
	cfg.Devices, cfg.Entries, cfg.Keys = 5, 50, 3
	cfg.Runs = append(cfg.Runs, runBatched)
	cfg.HeapDevices = 1000
	cfg.Duration = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, run(ctx, cfg, &out), out.String())

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Greater(t, len(lines), len(cfg.Runs), "a report line per run")
	var s map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &s), "last line is JSON: %s", lines[len(lines)-1])
	for _, k := range []string{
		"points_per_s", "messages_per_s", "bytes_per_s", "latency_p50_ms", "latency_p99_ms", "peak_heap_mb",
		"naive_points_per_s", "packed_points_per_s", "unbatched_points_per_s", "batched_points_per_s",
		"ratio_vs_raw_packed", "ratio_vs_naive", "ratio_unbatched_vs_naive", "heap_mb_100k_devices",
	} {
		v, ok := s[k].(float64)
		require.True(t, ok, "%s is a number: %v", k, s[k])
		require.Positive(t, v, k)
	}
	require.EqualValues(t, 0, s["lost"])
	require.EqualValues(t, 0, s["duplicates"])
	require.EqualValues(t, 0, s["errors"])
	require.EqualValues(t, 5, s["devices"])
	require.EqualValues(t, 50, s["entries"])
	require.EqualValues(t, 3, s["keys"])
	require.EqualValues(t, 1, s["qos"])
	require.EqualValues(t, 0, s["linger_ms"])
	require.Equal(t, "embedded", s["broker"])
	require.EqualValues(t, 1000, s["heap_devices"])

	// Every run delivered every point; the SDK without coalescing sends
	// exactly the naive messages, byte for byte in total.
	runs := map[string]map[string]any{}
	for _, r := range s["runs"].([]any) {
		r := r.(map[string]any)
		runs[r["name"].(string)] = r
		require.EqualValues(t, 750, r["points"], r["name"])
		require.EqualValues(t, 0, r["lost"], r["name"])
	}
	require.Len(t, runs, 5)
	require.EqualValues(t, 250, runs[runNaive]["messages"])
	require.Equal(t, runs[runNaive]["messages"], runs[runUnbatched]["messages"])
	require.Equal(t, runs[runNaive]["bytes"], runs[runUnbatched]["bytes"])
}

// TestBenchValuesForm: with -values the SDK runs fill Values maps, and send
// the same bytes as with Points.
func TestBenchValuesForm(t *testing.T) {
	cfg := defaultConfig()
	cfg.Devices, cfg.Entries, cfg.Keys = 3, 40, 4
	cfg.Runs = []string{runUnbatched, runNaive}
	cfg.HeapDevices = 0
	cfg.Values = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, run(ctx, cfg, &out), out.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var s struct {
		Form string `json:"sdk_form"`
		Lost int64  `json:"lost"`
		Runs []struct {
			Name   string `json:"name"`
			Points int64  `json:"points"`
			Bytes  int64  `json:"bytes"`
		} `json:"runs"`
	}
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &s))
	require.Equal(t, "values", s.Form)
	require.Zero(t, s.Lost)
	require.Len(t, s.Runs, 2)
	require.EqualValues(t, 480, s.Runs[0].Points)
	require.Equal(t, s.Runs[1].Bytes, s.Runs[0].Bytes, "values and naive send the same bytes")
}

func TestFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-runs", "sdk,naive,sdk", "-devices", "3"}, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, []string{runSDK, runNaive}, cfg.Runs)
	require.Equal(t, 3, cfg.Devices)

	_, err = parseFlags([]string{"-runs", "bogus"}, &bytes.Buffer{})
	require.Error(t, err)
	_, err = parseFlags([]string{"-broker", "tcp://192.0.2.1:1883"}, &bytes.Buffer{})
	require.ErrorContains(t, err, "loopback")
	_, err = parseFlags([]string{"-broker", "tcp://localhost:1883"}, &bytes.Buffer{})
	require.NoError(t, err)
}
