package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sluice-mta/sluice/deploy/cluster"
	"github.com/sluice-mta/sluice/deploy/stack"
)

// The first node's default route and monitoring ports with -cluster
// (-cluster-port, -monitor-port); node i takes port+i-1. They are
// nats-server's own defaults, so its documentation's examples (curl
// 127.0.0.1:8222/jsz) work as written.
const (
	clusterRoutePort   = 6222
	clusterMonitorPort = 8222
)

// startCluster starts nodes nats-server processes under dir, the first
// listening for clients on natsAddr's port, for routes on routePort and
// for monitoring on monitorPort. The nodes keep their names, ports and
// files from one run to the next, so the queue survives a restart of
// sluice-local as it does with the embedded server.
func startCluster(bin, dir, natsAddr string, nodes, routePort, monitorPort int, syncAlways bool) (*cluster.Cluster, error) {
	bin, _ = filepath.Abs(bin)
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("-cluster needs nats-server (make cluster builds it into bin/): %w", err)
	}
	_, p, err := net.SplitHostPort(natsAddr)
	if err != nil {
		return nil, fmt.Errorf("-nats %q: %w", natsAddr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("-nats %q: -cluster needs a fixed port", natsAddr)
	}
	return cluster.Start(cluster.Options{
		Bin:         bin,
		Dir:         dir,
		Nodes:       nodes,
		Name:        "sluice-local",
		SyncAlways:  syncAlways,
		ClientPort:  port,
		ClusterPort: routePort,
		MonitorPort: monitorPort,
	})
}

// stopCluster shuts every node down gracefully (after the services, which
// main stops first).
func stopCluster(c *cluster.Cluster) {
	if c == nil {
		return
	}
	for _, n := range c.Nodes {
		n.Stop(10 * time.Second)
	}
}

// superviseNode starts the node again after delay whenever it exits while
// sluice-local runs, as an orchestrator would: a user who kills a node sees
// the cluster fail over, then the node come back and catch up.
func superviseNode(ctx context.Context, n *cluster.Node, delay time.Duration, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.Done():
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("NATS node exited; starting it again", "node", n.Name, "in", delay.String(), "log", n.LogFile)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if err := n.Start(); err != nil {
			log.Error("NATS node restart failed", "node", n.Name, "err", err)
			return
		}
		log.Info("NATS node started", "node", n.Name, "pid", n.Pid(), "url", n.URL())
	}
}

// printCluster tells where the nodes are and how to try a failover.
func printCluster(c *cluster.Cluster, restart time.Duration, dataDir string) {
	fmt.Printf("\n  NATS cluster   %d nodes, every stream replicated 3 times:\n", len(c.Nodes))
	for _, n := range c.Nodes {
		fmt.Printf("    %s  %s  pid %-7d  monitoring http://%s  log %s\n", n.Name, n.URL(), n.Pid(), n.MonitorAddr, n.LogFile)
	}
	first := c.Nodes[0]
	fmt.Printf(`  Try failover   while mail flows, kill a node: kill -9 %d   (%s; or freeze it: kill -STOP %d, later kill -CONT %d)
`, first.Pid(), first.Name, first.Pid(), first.Pid())
	if restart > 0 {
		fmt.Printf("                 a node that exits is started again after %s, and catches up\n", restart)
	} else {
		fmt.Printf("                 a node that exits stays down (-node-restart 0)\n")
	}
	fmt.Printf(`                 each stream's leader and whether its replicas are current (exit status 3 when not):
                 bin/sluice -server %s cluster
`, c.URLs())
}

// jetStreamDir is where the stack's JetStream files are: the embedded
// server's directory, or the cluster's.
func jetStreamDir(s *stack.Stack, dataDir string) string {
	if s.NATS == nil {
		return filepath.Join(dataDir, "cluster")
	}
	return filepath.Join(dataDir, "jetstream")
}
