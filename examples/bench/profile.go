package main

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strings"
)

// startProfiles starts the CPU profile and execution trace of one run,
// into files named with the run's name before the extension (cpu.pprof ->
// cpu-sdk.pprof).
func startProfiles(cfg config, run string) (stop func(), err error) {
	var stops []func()
	stop = func() {
		for _, f := range stops {
			f()
		}
	}
	create := func(path string) (*os.File, error) {
		ext := filepath.Ext(path)
		return os.Create(strings.TrimSuffix(path, ext) + "-" + run + ext)
	}
	if cfg.CPUProfile != "" {
		f, err := create(cfg.CPUProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
	}
	if cfg.Trace != "" {
		f, err := create(cfg.Trace)
		if err != nil {
			stop()
			return nil, err
		}
		if err := trace.Start(f); err != nil {
			f.Close()
			stop()
			return nil, err
		}
		stops = append(stops, func() { trace.Stop(); f.Close() })
	}
	return stop, nil
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
