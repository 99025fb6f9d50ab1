module github.com/sluice-mta/sluice/deliverer

go 1.26
