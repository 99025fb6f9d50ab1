package worker

// cycle chooses the priority class of the next fetch by smooth weighted
// round robin (the algorithm of nginx's upstream balancer): every turn each
// eligible class gains its weight in credit, the class with the most credit
// is chosen and pays back the sum of the eligible weights. With weights
// 8/3/1 twelve turns go H N H H B H N H H H N H, interleaved rather
// than in bursts, so bulk gets one turn in twelve however busy the other
// classes are. A class found empty is skipped for the rest of the round
// (skip), which hands its turn to the next one instead of idling.
//
// cycle is not safe for concurrent use; only the dispatcher uses it.
type cycle struct {
	weights []int
	credit  []int
}

func newCycle(weights ...int) *cycle {
	return &cycle{weights: weights, credit: make([]int, len(weights))}
}

// next returns the index of the chosen class, or -1 when skip excludes all.
func (c *cycle) next(skip func(i int) bool) int {
	total, best := 0, -1
	for i, w := range c.weights {
		if w <= 0 || (skip != nil && skip(i)) {
			continue
		}
		c.credit[i] += w
		total += w
		if best < 0 || c.credit[i] > c.credit[best] {
			best = i
		}
	}
	if best >= 0 {
		c.credit[best] -= total
	}
	return best
}
