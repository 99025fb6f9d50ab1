// Command queue is the scale benchmark of `sluice queue` (make bench-queue).
//
// It starts the whole system from bin/ (embedded JetStream and the four
// services as processes, as `make run` does), fills the queue with a
// million deferred jobs across a thousand destination domains, and measures
// what an operator waits for, through the running scheduler and the real
// CLI binary:
//
//   - the wall time of `sluice queue stats` (qshape table of the million);
//   - the time until `sluice queue list -domain D` prints its first job;
//   - the memory the scheduler's index needs per job: in this process, the
//     same index code fed the same events, measured with runtime.MemStats
//     after a collection; and the scheduler process's live heap as it
//     reports it;
//   - how long a restarted scheduler takes to have its index again
//     (restarted -restarts times, each stopped with SIGTERM, so that it
//     saves a snapshot of its index, which the next start loads: the time
//     the save took, the wall time until it answers with every job, and the
//     load time it logs), and the resident memory of the scheduler process
//     with the loaded index, per job; then once killed, with the snapshot
//     deleted, as after a crash before any snapshot: the rebuild from the
//     events alone.
//
// To build that state quickly it publishes the jobs' events straight to
// SLUICE_EVENTS following the contract (proto/admin.QueueEvent in its stored
// form, admin.MarshalQueueEvent, under wire.EventSubject): a received and a deferred event per job, which is
// exactly what the scheduler's index is made of. The jobs themselves are not
// in SLUICE_JOBS, so this measures the queue views, not delivery.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluice-mta/sluice/deploy/stack"
	"github.com/sluice-mta/sluice/proto/admin"
	"github.com/sluice-mta/sluice/proto/wire"
	"github.com/sluice-mta/sluice/scheduler/index"
	"github.com/sluice-mta/sluice/services/freeport"
)

func main() {
	bin := flag.String("bin", "bin", "directory with the service binaries and sluice")
	jobs := flag.Int("jobs", 1000000, "deferred jobs to fill the queue with")
	domains := flag.Int("domains", 1000, "destination domains")
	runs := flag.Int("runs", 5, "measurements of each command")
	keep := flag.Bool("keep", false, "keep the data directory")
	restarts := flag.Int("restarts", 3, "scheduler restarts (stopped, so it saves a snapshot of its index), each timing the index load; then one more, killed with the snapshot deleted, timing the rebuild from the events alone")
	heapProfile := flag.String("heap-profile", "", "write the scheduler's heap profile after the last rebuild to this file")
	cpuProfile := flag.String("cpu-profile", "", "profile the last rebuild: the scheduler to FILE.scheduler, this process (the NATS server) to FILE.nats")
	flag.Parse()
	if err := run(*bin, *jobs, *domains, *runs, *restarts, *heapProfile, *cpuProfile, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "bench-queue:", err)
		os.Exit(1)
	}
}

func run(bin string, jobs, domains, runs, restarts int, heapProfile, cpuProfile string, keep bool) error {
	bin, _ = filepath.Abs(bin)
	cli := filepath.Join(bin, "sluice")
	if _, err := os.Stat(cli); err != nil {
		return fmt.Errorf("%s missing: run make build", cli)
	}
	dir, err := os.MkdirTemp("", "sluice-bench-queue-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	// The index's own footprint: the same code fed the same kind of events,
	// in this process before anything else runs in it, measured after a
	// collection.
	now := time.Now().UTC()
	perJob := localIndexMemory(jobs, domains, now)

	natsAddr, _ := freeport.Addr()
	smtpAddr, _ := freeport.Addr()
	st, err := stack.Start(context.Background(), stack.Options{
		BinDir: bin, DataDir: dir, NATSListen: natsAddr,
		Config: map[string]map[string]any{"ingress": {"listen": smtpAddr}},
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return err
	}
	defer st.Close()
	url := st.NATS.ClientURL()
	fmt.Printf("sluice queue benchmark: %d deferred jobs across %d domains, %d CPUs, data in %s\n", jobs, domains, runtime.NumCPU(), dir)

	// The scheduler answers once its (empty) index is loaded.
	base, err := waitStats(cli, url, 0, 60*time.Second)
	if err != nil {
		return err
	}

	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return err
	}
	start := time.Now()
	if err := fill(js, jobs, domains, now); err != nil {
		return err
	}
	fmt.Printf("published %d events in %s\n", 2*jobs, time.Since(start).Round(time.Millisecond))

	full, err := waitStats(cli, url, jobs, 10*time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("scheduler index holds %d jobs %s after the fill began\n", full.IndexJobs, time.Since(start).Round(time.Millisecond))

	var statsTimes, firstRows, listTimes []time.Duration
	for i := 0; i < runs; i++ {
		d, out, err := timeCmd(cli, "queue", "stats", "-server", url)
		if err != nil {
			return fmt.Errorf("stats: %v: %s", err, out)
		}
		if i == 0 {
			lines := strings.SplitN(out, "\n", 5)
			fmt.Printf("first lines of `sluice queue stats`:\n  %s\n", strings.Join(lines[:min(4, len(lines))], "\n  "))
		}
		statsTimes = append(statsTimes, d)
		domain := fmt.Sprintf("d%04d.example", (i*37)%domains)
		first, total, n, err := timeFirstRow(cli, "queue", "list", "-domain", domain, "-server", url)
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		if n != jobs/domains {
			return fmt.Errorf("list -domain %s printed %d jobs, want %d", domain, n, jobs/domains)
		}
		firstRows = append(firstRows, first)
		listTimes = append(listTimes, total)
	}
	heapPerJob := float64(full.HeapBytes-base.HeapBytes) / float64(full.IndexJobs)
	fullRSS := rss(st.Proc("scheduler").Pid())

	// One message's history, read from the events stream of the million.
	out, err := exec.Command(cli, "queue", "list", "-json", "-limit", "1", "-domain", "d0001.example", "-server", url).Output()
	if err != nil {
		return fmt.Errorf("list -limit 1: %v", err)
	}
	var row admin.QueueRow
	if err := json.Unmarshal(out, &row); err != nil {
		return fmt.Errorf("list -json: %v: %q", err, out)
	}
	var showTimes []time.Duration
	for i := 0; i < runs; i++ {
		d, out, err := timeCmd(cli, "queue", "show", row.QueueID, "-server", url)
		if err != nil {
			return fmt.Errorf("show: %v: %s", err, out)
		}
		showTimes = append(showTimes, d)
	}

	// Restart the scheduler: stopped, it saves a snapshot of the index,
	// and started again it loads the snapshot and reads the events after
	// it. Then once killed with its snapshot deleted, as after a crash
	// before its first snapshot: it rebuilds the index from the events.
	var rebuilds, loads, saves []time.Duration
	var rssPerJob, livePerJob []float64
	var fromEvents, fromEventsLoad time.Duration
	snaps, err := js.ObjectStore(context.Background(), wire.BucketIndex)
	if err != nil {
		return fmt.Errorf("index snapshots: %w", err)
	}
	for i := 0; i <= restarts; i++ {
		p := st.Proc("scheduler")
		last := i == restarts
		if last {
			p.Kill()
			if err := snaps.Delete(context.Background(), index.SnapshotObject); err != nil {
				return fmt.Errorf("delete the index snapshot: %w", err)
			}
		} else {
			// A scheduler whose index did not change since it loaded
			// its snapshot saves none: only the first stop writes one.
			before := len(savedLine.FindAllIndex(readFile(p.Log()), -1))
			p.Stop(time.Minute)
			if len(savedLine.FindAllIndex(readFile(p.Log()), -1)) > before {
				saves = append(saves, logDuration(savedLine, p.Log()))
			}
		}
		restart := time.Now()
		if err := p.Start(); err != nil {
			return err
		}
		var stopProfiles func() error
		if cpuProfile != "" && last {
			if stopProfiles, err = startCPUProfiles(st.Metrics["scheduler"], cpuProfile); err != nil {
				return err
			}
		}
		r, err := waitStats(cli, url, jobs, 10*time.Minute)
		if err != nil {
			return err
		}
		took := time.Since(restart)
		if stopProfiles != nil {
			if err := stopProfiles(); err != nil {
				return err
			}
		}
		if last {
			fromEvents, fromEventsLoad = took, logDuration(loadedLine, p.Log())
			fmt.Printf("killed, without a snapshot: answers with every job after %s, index loaded in %s\n", took.Round(time.Millisecond), fromEventsLoad)
			break
		}
		rebuilds = append(rebuilds, took)
		loads = append(loads, logDuration(loadedLine, p.Log()))
		// The whole process: its resident memory with the index of the
		// million and nothing else to do, over the jobs.
		rssPerJob = append(rssPerJob, float64(rss(p.Pid()))/float64(jobs))
		livePerJob = append(livePerJob, float64(r.HeapBytes)/float64(jobs))
		fmt.Printf("restart %d: answers with every job after %s, index loaded in %s; RSS %.0f bytes per job, live heap %.0f\n",
			i+1, rebuilds[i].Round(time.Millisecond), loads[i], rssPerJob[i], livePerJob[i])
	}
	if heapProfile != "" {
		if err := saveHeapProfile(st.Metrics["scheduler"], heapProfile); err != nil {
			return err
		}
	}

	fmt.Println()
	fmt.Printf("%-48s %s\n", "figure", "result (target)")
	fmt.Printf("%-48s median %s, max %s (< 2s)\n", "sluice queue stats, wall time", median(statsTimes), slices.Max(statsTimes))
	fmt.Printf("%-48s median %s, max %s (< 1s)\n", "sluice queue list -domain D, first row", median(firstRows), slices.Max(firstRows))
	fmt.Printf("%-48s median %s\n", fmt.Sprintf("sluice queue list -domain D, all %d rows", jobs/domains), median(listTimes))
	fmt.Printf("%-48s median %s\n", "sluice queue show ID (history from events)", median(showTimes))
	fmt.Printf("%-48s %.0f bytes (< 1024)\n", "index memory per job (heap + outside, same code)", perJob)
	fmt.Printf("%-48s %.0f bytes\n", "scheduler live heap growth per job", heapPerJob)
	fmt.Printf("%-48s %.0f bytes\n", "scheduler RSS per job after the fill", float64(fullRSS)/float64(jobs))
	if restarts > 0 {
		if len(saves) > 0 {
			fmt.Printf("%-48s median %s (%s-%s) of %d saves\n", "index snapshot saved at stop", median(saves), slices.Min(saves), slices.Max(saves), len(saves))
		}
		fmt.Printf("%-48s median %s (%s-%s)\n", "index rebuild after a restart, until it answers", median(rebuilds), slices.Min(rebuilds).Round(time.Millisecond), slices.Max(rebuilds).Round(time.Millisecond))
		fmt.Printf("%-48s median %s (%s-%s)\n", "index rebuild, load time the scheduler logs", median(loads), slices.Min(loads), slices.Max(loads))
		fmt.Printf("%-48s %s (load time logged %s)\n", "rebuild from the events alone (killed, no snapshot)", fromEvents.Round(time.Millisecond), fromEventsLoad)
		fmt.Printf("%-48s median %.0f (%.0f-%.0f) bytes\n", "scheduler RSS per job after a restart", medianF(rssPerJob), slices.Min(rssPerJob), slices.Max(rssPerJob))
		fmt.Printf("%-48s median %.0f (%.0f-%.0f) bytes\n", "scheduler live heap per job after a restart", medianF(livePerJob), slices.Min(livePerJob), slices.Max(livePerJob))
	}
	return nil
}

// rss is the resident set size of process pid in bytes (0 when unknown).
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || pid == 0 {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

var (
	loadedLine = regexp.MustCompile(`queue index loaded.*duration_ms[=":]+\s*(\d+)`)
	savedLine  = regexp.MustCompile(`queue index snapshot saved.*duration_ms[=":]+\s*(\d+)`)
)

// loadTime is the duration of the last index load the scheduler logged.
func readFile(name string) []byte {
	b, _ := os.ReadFile(name)
	return b
}

func logDuration(line *regexp.Regexp, logFile string) time.Duration {
	m := line.FindAllSubmatch(readFile(logFile), -1)
	if len(m) == 0 {
		return 0
	}
	ms, _ := strconv.Atoi(string(m[len(m)-1][1]))
	return time.Duration(ms) * time.Millisecond
}

// saveHeapProfile writes the heap profile of the service whose metrics
// endpoint (which serves /debug/pprof) is at addr.
func saveHeapProfile(addr, file string) error {
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap?gc=1")
	if err != nil {
		return fmt.Errorf("heap profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("heap profile: %s", resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// startCPUProfiles profiles this process (the embedded NATS server) until
// the returned function is called, and the service whose metrics endpoint
// is at addr for the next 15 seconds (the returned function waits for it).
func startCPUProfiles(addr, prefix string) (func() error, error) {
	f, err := os.Create(prefix + ".nats")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		// The service's endpoint comes up with it.
		var resp *http.Response
		var err error
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			resp, err = http.Get("http://" + addr + "/debug/pprof/profile?seconds=15")
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			done <- fmt.Errorf("cpu profile: %w", err)
			return
		}
		defer resp.Body.Close()
		out, err := os.Create(prefix + ".scheduler")
		if err == nil {
			_, err = io.Copy(out, resp.Body)
			out.Close()
		}
		done <- err
	}()
	return func() error {
		pprof.StopCPUProfile()
		f.Close()
		return <-done
	}, nil
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// localIndexMemory builds an index of the benchmark's jobs in this process
// and returns its memory per job: its heap, and what it holds outside.
func localIndexMemory(jobs, domains int, now time.Time) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := index.New(time.Hour)
	for i := 0; i < jobs; i++ {
		rec, def := events(i, domains, now)
		x.Apply(rec, uint64(2*i+1))
		x.Apply(def, uint64(2*i+2))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := x.Len()
	return float64(int64(after.HeapAlloc-before.HeapAlloc)+int64(x.StorageBytes())) / float64(n)
}

// events are the received and deferred events of the i-th job: arrivals
// spread over 50 hours, a thousand senders' newsletters, greylisting
// replies naming the domain.
func events(i, domains int, now time.Time) (*admin.QueueEvent, *admin.QueueEvent) {
	// Ages spread over 50 hours within every domain.
	at := now.Add(-time.Duration((i/domains*37+i)%3000) * time.Minute)
	qid := wire.NewQueueID(at)
	jobID := wire.JobID(qid, 0)
	domain := fmt.Sprintf("d%04d.example", i%domains)
	rcpt := fmt.Sprintf("user%d@%s", i/domains, domain)
	rec := &admin.QueueEvent{
		Type: wire.EventReceived, Time: at, QueueID: qid, JobID: jobID, State: admin.StateReady, Attempt: 1,
		Priority: "normal", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
		Envelope: &admin.QueueEnvelope{Sender: fmt.Sprintf("newsletter%d@sender.example", i%5000), Recipients: []string{rcpt},
			Domain: domain, Size: 4096 + int64(i%20000), Received: at, Expires: at.Add(120 * time.Hour), JobsTotal: 1},
	}
	reply := "451 4.7.1 " + domain + " is greylisting, try again later"
	def := &admin.QueueEvent{
		Type: wire.EventDeferred, Time: at.Add(time.Second), QueueID: qid, JobID: jobID, State: admin.StateDeferred,
		Attempt: 1, Priority: "normal", Instance: "deliverer-1", RemoteHost: "mx." + domain, Reason: "remote", Error: reply,
		NextAttempt: now.Add(time.Duration(1+i%60) * time.Minute),
		Recipients:  []admin.QueueRecipientResult{{Address: rcpt, Outcome: "deferred", Reason: "remote", Reply: reply, RemoteHost: "mx." + domain}},
	}
	return rec, def
}

// fill publishes the received and deferred event of every job.
func fill(js jetstream.JetStream, jobs, domains int, now time.Time) error {
	publish := func(ev *admin.QueueEvent) error {
		_, err := js.PublishAsync(wire.EventSubject(ev.QueueID, ev.Type, ev.Time), admin.MarshalQueueEvent(ev))
		return err
	}
	wait := func() error {
		select {
		case <-js.PublishAsyncComplete():
			return nil
		case <-time.After(time.Minute):
			return fmt.Errorf("publishing events: no acknowledgement after a minute")
		}
	}
	for i := 0; i < jobs; i++ {
		rec, def := events(i, domains, now)
		if err := publish(rec); err != nil {
			return err
		}
		if err := publish(def); err != nil {
			return err
		}
		if i%2000 == 1999 {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	return wait()
}

// waitStats polls `sluice queue stats -json` until the index holds want
// deferred jobs.
func waitStats(cli, url string, want int, timeout time.Duration) (*admin.QueueStatsResponse, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		out, err := exec.Command(cli, "queue", "stats", "-json", "-top", "1", "-server", url, "-timeout", "30s").CombinedOutput()
		if err == nil {
			var r admin.QueueStatsResponse
			// Every job's deferred event is applied: the index is idle.
			if json.Unmarshal(out, &r) == nil && r.IndexJobs == want && r.ByState[admin.StateDeferred] == want {
				return &r, nil
			}
		}
		last = strings.TrimSpace(string(out))
		time.Sleep(500 * time.Millisecond)
	}
	return nil, fmt.Errorf("the scheduler's index did not reach %d jobs in %s (last: %.300s)", want, timeout, last)
}

func timeCmd(name string, args ...string) (time.Duration, string, error) {
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	return time.Since(start), string(out), err
}

// timeFirstRow runs a listing and returns when its first job line appeared
// (the line after the header), how long it ran, and how many jobs it
// printed.
func timeFirstRow(name string, args ...string) (first, total time.Duration, n int, err error) {
	cmd := exec.Command(name, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, 0, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, err
	}
	sc := bufio.NewScanner(out)
	lines := 0
	for sc.Scan() {
		lines++
		if lines == 2 {
			first = time.Since(start)
		}
	}
	if err := cmd.Wait(); err != nil {
		return 0, 0, 0, fmt.Errorf("%v: %s", err, stderr.String())
	}
	return first, time.Since(start), lines - 1, nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}
