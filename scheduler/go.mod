module github.com/sluice-mta/sluice/scheduler

go 1.26
